# spillway: `make run` shows what spillway would scale on local brokers; `make test` runs every test.
# Both set up a fresh machine by themselves (scripts/install-deps.sh).

CARGO ?= cargo

.PHONY: run test bench bench-api bench-compare bench-sharing fuzz faults soak services-up services-down services-status lint deps build

run: deps
	scripts/run.sh

test: deps
	scripts/test.sh

services-up: deps
	scripts/services.sh up

services-down:
	scripts/services.sh down

services-status:
	scripts/services.sh status

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

build:
	$(CARGO) build --release --locked

deps:
	scripts/install-deps.sh

# Figures, not assertions: Kafka tick time over 10,000 partitions and requests per tick;
# latency of one external-metrics GET through kube-apiserver against its own GET; polls per
# healthy trigger per minute next to 0, 1 and 10 hung endpoints; the metrics API at 10,000
# requests per second from 200 clients and at saturation, and against its floor (about 13
# minutes).
bench: services-up
	$(CARGO) bench --locked --bench kafka_lag
	$(CARGO) bench --locked --bench metrics_api
	$(CARGO) bench --locked --bench fault_isolation
	$(CARGO) bench --locked --bench metrics_load
	$(CARGO) bench --locked --bench api_floor
	$(CARGO) bench --locked --bench kafka_fleet

# The metrics API alone (about 8 minutes): against its floor, a bare axum + rustls server built
# in the same run, without and with front-proxy authentication, saturation and p99 at a fixed
# 10,000 req/s (benches/api_floor.rs); then 1,000 triggers read by 200 clients
# (benches/metrics_load.rs). SPILLWAY_FLOOR_ROUNDS=N repeats the floor comparison N times.
bench-api: services-up
	$(CARGO) bench --locked --bench api_floor
	$(CARGO) bench --locked --bench metrics_load

# Side by side with KEDA (issue 19): the release spillway serve and KEDA's own scalers (bench/keda/,
# a Go driver built against KEDA's released module, cached under ~/.cache/spillway/ by
# scripts/keda-driver.sh) on the same broker, topic, groups and queues: 10 / 100 / 1,000 / 5,000
# Kafka objects plus 100 RabbitMQ queues and 100 Prometheus queries, each program in a network
# namespace behind a counting proxy (needs root). About 7 minutes, plus the driver's first
# build; COMPARE_KEDA_SIZES=10,100 picks sizes.
bench-compare: services-up
	KEDA_DRIVER="$$(scripts/keda-driver.sh)" $(CARGO) bench --locked --bench compare_keda

# Replicas sharing the polling (issue #20 item 5; not in make test): broker requests per
# polling interval with 1, 2 and 3 replicas sharing and 2 without, metrics GET latency for an
# own vs a copied trigger and the copy delay, failover after SIGKILL (member Lease 10 s and
# 4 s) and SIGTERM, and RSS per replica with 5,000 Kafka objects over 1 and over 3 replicas.
# Prints a markdown table. SPILLWAY_SHARING_FLEET=1000 for a quicker run (the fleet's creation
# dominates), SPILLWAY_SHARING_KAFKA (200), SPILLWAY_SHARING_WINDOW (30 s).
bench-sharing: services-up
	$(CARGO) bench --locked --bench sharing

# The fault matrix alone (it also runs in make test, about 5 minutes): broker kill -9, SIGSTOP,
# restart, Toxiproxy latency, bandwidth, cut answers, resets and blackhole, Secret rotation,
# spillway leader killed and both replicas restarted, kube-apiserver and etcd restarts, each
# while an HPA holds 3 replicas; prints the README's table and every sample.
# SPILLWAY_FAULT_CASES=kill,reset picks cases by name.
faults: services-up
	SPILLWAY_FAULT_TIMELINE=1 $(CARGO) test --locked --test e2e_faults -- --nocapture

# Hostile input at length: every property of tests/hostile_input.rs with 50,000 cases each
# (make test runs 2,000 per parser and 300 per broker answer). About 20 minutes.
fuzz: services-up
	PROPTEST_CASES=50000 $(CARGO) test --locked --test hostile_input -- --nocapture

# The soak at length: tests/soak.rs for 30 minutes (make test runs it for 3): 1,000
# ScaledObjects created, edited and deleted continuously, both brokers restarted twice, the
# metrics API under steady load; RSS, fds, tasks, series and cache entries at start and end.
soak: services-up
	SPILLWAY_SOAK_SECS=1800 $(CARGO) test --locked --test soak -- --nocapture
