// Command keda-driver runs KEDA's own scalers the way KEDA's operator runs them, for
// spillway's side-by-side benchmark (benches/compare_keda.rs, `make bench-compare`).
//
// It reads a JSON plan of objects (name, trigger type, trigger metadata), builds one scaler per
// object with the same ScalerConfig and constructor as KEDA's operator (pkg/scaling's
// buildScalers and buildScaler), and polls each object in its own goroutine on KEDA's schedule
// (startScaleLoop: a timer of pollingInterval armed before each check). Each check asks the
// scaler for its metric spec and then calls GetMetricsAndActivity; an error rebuilds the scaler
// and asks once more, as ScalersCache.GetMetricsAndActivityForScaler does.
//
// KEDA v2.21.0: v2.21.1, the newest release the module proxy serves, declares go 1.27.4, newer
// than the Go toolchains this project's machines have (go1.26.8, and go1.27.3 through
// GOTOOLCHAIN).
//
// Protocol on standard streams, one JSON object per line on stdout:
//
//	{"event":"built",...}   every scaler is built
//	{"event":"ready",...}   every object has read a value
//	stdin "mark"            starts a measurement window (counts and latencies reset)
//	stdin "report"          prints {"event":"report",...} for the window so far
//	stdin closed            closes every scaler and exits
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/kedacore/keda/v2/pkg/scalers"
	"github.com/kedacore/keda/v2/pkg/scalers/scalersconfig"
	kedautil "github.com/kedacore/keda/v2/pkg/util"
	v2 "k8s.io/api/autoscaling/v2"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
)

// namespace every benchmark object lives in, as a ScaledObject would.
const namespace = "bench"

// globalHTTPTimeout is the operator's default KEDA_HTTP_DEFAULT_TIMEOUT (3000 ms).
const globalHTTPTimeout = 3000 * time.Millisecond

// Plan is the benchmark's input: what to build and how often to poll it.
type Plan struct {
	PollingIntervalSeconds int      `json:"pollingIntervalSeconds"`
	Objects                []Object `json:"objects"`
}

// Object is one ScaledObject with one trigger.
type Object struct {
	Name     string            `json:"name"`
	Type     string            `json:"type"`
	Metadata map[string]string `json:"metadata"`
}

// scalerConfig is what pkg/scaling's buildScalers gives buildScaler for trigger 0 of a
// ScaledObject without env, TriggerAuthentication or pod identity.
func scalerConfig(o Object) *scalersconfig.ScalerConfig {
	return &scalersconfig.ScalerConfig{
		ScalableObjectName:      o.Name,
		ScalableObjectNamespace: namespace,
		ScalableObjectType:      "ScaledObject",
		TriggerMetadata:         o.Metadata,
		TriggerType:             o.Type,
		ResolvedEnv:             map[string]string{},
		AuthParams:              map[string]string{},
		GlobalHTTPTimeout:       globalHTTPTimeout,
		TriggerIndex:            0,
		MetricType:              v2.AverageValueMetricType,
		TriggerUniqueKey:        fmt.Sprintf("ScaledObject-%s-%s-0", namespace, o.Name),
	}
}

// buildScaler is KEDA's buildScaler for the trigger types this benchmark compares.
func buildScaler(ctx context.Context, o Object) (scalers.Scaler, error) {
	config := scalerConfig(o)
	switch o.Type {
	case "kafka":
		return scalers.NewKafkaScaler(ctx, config)
	case "rabbitmq":
		return scalers.NewRabbitMQScaler(config)
	case "prometheus":
		return scalers.NewPrometheusScaler(config)
	default:
		return nil, fmt.Errorf("trigger type %q is not part of the benchmark", o.Type)
	}
}

// poller is one object's scale loop and what it has read.
type poller struct {
	object Object
	mu     sync.Mutex
	scaler scalers.Scaler
}

// check is one iteration of KEDA's scale loop for an object with one trigger: the metric spec,
// then GetMetricsAndActivity, rebuilt and asked once more on an error.
func (p *poller) check(ctx context.Context) (float64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	specs := p.scaler.GetMetricSpecForScaling(ctx)
	if len(specs) == 0 || specs[0].External == nil {
		return 0, fmt.Errorf("%s: no external metric spec", p.object.Name)
	}
	metricName := specs[0].External.Metric.Name
	metrics, _, err := p.scaler.GetMetricsAndActivity(ctx, metricName)
	if err != nil {
		fresh, buildErr := buildScaler(ctx, p.object)
		if buildErr != nil {
			return 0, buildErr
		}
		_ = p.scaler.Close(ctx)
		p.scaler = fresh
		metrics, _, err = p.scaler.GetMetricsAndActivity(ctx, metricName)
	}
	if err != nil {
		return 0, err
	}
	if len(metrics) == 0 {
		return 0, fmt.Errorf("%s: no metric value", p.object.Name)
	}
	return metrics[0].Value.AsApproximateFloat64(), nil
}

// stats are the figures of the current measurement window.
type stats struct {
	mu        sync.Mutex
	latencies map[string][]time.Duration // by trigger type
	polls     map[string]int
	errors    map[string]int
	lastError map[string]string
	values    map[string]float64
	since     time.Time
}

func newStats(objects []Object) *stats {
	s := &stats{values: map[string]float64{}}
	s.reset(objects)
	return s
}

// reset starts a window; the last value of each object is kept.
func (s *stats) reset(objects []Object) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latencies = map[string][]time.Duration{}
	s.polls = make(map[string]int, len(objects))
	s.errors = map[string]int{}
	s.lastError = map[string]string{}
	for _, o := range objects {
		s.polls[o.Name] = 0
	}
	s.since = time.Now()
}

func (s *stats) record(o Object, took time.Duration, value float64, err error) {
	name := o.Name
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latencies[o.Type] = append(s.latencies[o.Type], took)
	s.polls[name]++
	if err != nil {
		s.errors[name]++
		s.lastError[name] = err.Error()
		return
	}
	s.values[name] = value
}

func (s *stats) valued() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.values)
}

// quantile of sorted durations, nearest rank, in milliseconds.
func quantile(sorted []time.Duration, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(q*float64(len(sorted))+0.999999) - 1
	if rank < 0 {
		rank = 0
	}
	if rank >= len(sorted) {
		rank = len(sorted) - 1
	}
	return float64(sorted[rank].Microseconds()) / 1000
}

// Latency is the p50 and p99 of one trigger type's checks in a window, in milliseconds.
type Latency struct {
	Polls int     `json:"polls"`
	P50   float64 `json:"p50"`
	P99   float64 `json:"p99"`
}

// Report is the figures of one window.
type Report struct {
	Event         string             `json:"event"`
	WindowSeconds float64            `json:"windowSeconds"`
	Objects       int                `json:"objects"`
	Polls         int                `json:"polls"`
	FewestPolls   int                `json:"fewestPolls"`
	Errors        int                `json:"errors"`
	SomeError     string             `json:"someError,omitempty"`
	PollMs        map[string]Latency `json:"pollMs"`
	RSSMB         float64            `json:"rssMB"`
	Goroutines    int                `json:"goroutines"`
	Threads       int                `json:"threads"`
	OpenFDs       int                `json:"openFDs"`
	Sockets       int                `json:"sockets"`
	Values        map[string]float64 `json:"values"`
}

func (s *stats) report(objects []Object) Report {
	s.mu.Lock()
	defer s.mu.Unlock()
	polls := 0
	pollMs := map[string]Latency{}
	for kind, took := range s.latencies {
		sorted := append([]time.Duration(nil), took...)
		sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
		polls += len(sorted)
		pollMs[kind] = Latency{Polls: len(sorted), P50: quantile(sorted, 0.5), P99: quantile(sorted, 0.99)}
	}
	fewest := -1
	for _, o := range objects {
		if n := s.polls[o.Name]; fewest < 0 || n < fewest {
			fewest = n
		}
	}
	errors, someError := 0, ""
	for name, n := range s.errors {
		errors += n
		someError = name + ": " + s.lastError[name]
	}
	values := make(map[string]float64, len(s.values))
	for k, v := range s.values {
		values[k] = v
	}
	rss, threads := procStatus()
	fds, sockets := openFDs()
	return Report{
		Event:         "report",
		WindowSeconds: time.Since(s.since).Seconds(),
		Objects:       len(objects),
		Polls:         polls,
		FewestPolls:   fewest,
		Errors:        errors,
		SomeError:     someError,
		PollMs:        pollMs,
		RSSMB:         rss,
		Goroutines:    runtime.NumGoroutine(),
		Threads:       threads,
		OpenFDs:       fds,
		Sockets:       sockets,
		Values:        values,
	}
}

// procStatus is this process's RSS (MB) and thread count from /proc/self/status.
func procStatus() (float64, int) {
	text, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, 0
	}
	var rss float64
	var threads int
	for _, line := range strings.Split(string(text), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 2 {
			continue
		}
		switch fields[0] {
		case "VmRSS:":
			kb, _ := strconv.ParseFloat(fields[1], 64)
			rss = kb / 1024
		case "Threads:":
			threads, _ = strconv.Atoi(fields[1])
		}
	}
	return rss, threads
}

// openFDs counts this process's open descriptors and the sockets among them.
func openFDs() (int, int) {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0, 0
	}
	sockets := 0
	for _, e := range entries {
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err == nil && strings.HasPrefix(target, "socket:") {
			sockets++
		}
	}
	return len(entries), sockets
}

// scaleLoop is KEDA's startScaleLoop: the timer is armed before the check, so a check slower
// than the interval is followed by the next one at once.
func scaleLoop(ctx context.Context, p *poller, interval time.Duration, s *stats) {
	for {
		timer := time.NewTimer(interval)
		started := time.Now()
		value, err := p.check(ctx)
		s.record(p.object, time.Since(started), value, err)
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return
		}
	}
}

func emit(v any) {
	line, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	fmt.Println(string(line))
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: keda-driver PLAN.json")
		os.Exit(2)
	}
	raw, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var plan Plan
	if err := json.Unmarshal(raw, &plan); err != nil {
		fmt.Fprintln(os.Stderr, "plan:", err)
		os.Exit(1)
	}
	// KEDA logs through controller-runtime's logger; the benchmark keeps stdout for figures.
	ctrllog.SetLogger(logr.Discard())
	// The operator's flag defaults: --http-max-idle-conns 0, --http-max-idle-conns-per-host
	// 1000, --http-idle-conn-timeout 90s.
	if err := kedautil.ConfigureHTTPTransport(kedautil.HTTPTransportConfig{
		MaxIdleConns:        0,
		MaxIdleConnsPerHost: 1000,
		IdleConnTimeout:     90 * time.Second,
	}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}

	ctx, cancel := context.WithCancel(context.Background())
	started := time.Now()
	pollers := make([]*poller, 0, len(plan.Objects))
	for _, o := range plan.Objects {
		scaler, err := buildScaler(ctx, o)
		if err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n", o.Name, err)
			os.Exit(1)
		}
		pollers = append(pollers, &poller{object: o, scaler: scaler})
	}
	emit(map[string]any{"event": "built", "objects": len(pollers), "seconds": time.Since(started).Seconds()})

	interval := time.Duration(plan.PollingIntervalSeconds) * time.Second
	s := newStats(plan.Objects)
	var loops sync.WaitGroup
	for _, p := range pollers {
		loops.Add(1)
		go func(p *poller) {
			defer loops.Done()
			scaleLoop(ctx, p, interval, s)
		}(p)
	}
	go func() {
		for s.valued() < len(pollers) {
			time.Sleep(100 * time.Millisecond)
		}
		emit(map[string]any{"event": "ready", "seconds": time.Since(started).Seconds()})
	}()

	commands := bufio.NewScanner(os.Stdin)
	for commands.Scan() {
		switch strings.TrimSpace(commands.Text()) {
		case "mark":
			s.reset(plan.Objects)
		case "report":
			emit(s.report(plan.Objects))
		}
	}
	cancel()
	loops.Wait()
	for _, p := range pollers {
		_ = p.scaler.Close(context.Background())
	}
}
