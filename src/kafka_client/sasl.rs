//! SASL mechanisms spoken over SaslHandshake + SaslAuthenticate: PLAIN (RFC 4616) and
//! SCRAM-SHA-256/512 (RFC 5802, RFC 7677). Pure message building and checking; the connection
//! carries the bytes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::{digest, hmac, pbkdf2};

/// Who to authenticate as, and how.
#[derive(Clone)]
pub enum SaslCredentials {
    Plain {
        username: String,
        password: String,
    },
    Scram {
        mechanism: ScramMechanism,
        username: String,
        password: String,
    },
}

impl std::fmt::Debug for SaslCredentials {
    // Never prints the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SaslCredentials({})", self.mechanism())
    }
}

/// The SCRAM hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScramMechanism {
    Sha256,
    Sha512,
}

impl SaslCredentials {
    /// The mechanism name SaslHandshake announces.
    pub fn mechanism(&self) -> &'static str {
        match self {
            Self::Plain { .. } => "PLAIN",
            Self::Scram {
                mechanism: ScramMechanism::Sha256,
                ..
            } => "SCRAM-SHA-256",
            Self::Scram {
                mechanism: ScramMechanism::Sha512,
                ..
            } => "SCRAM-SHA-512",
        }
    }
}

/// PLAIN's single message: `\0username\0password`.
pub fn plain_message(username: &str, password: &str) -> Vec<u8> {
    format!("\0{username}\0{password}").into_bytes()
}

/// One SCRAM exchange, client side.
pub struct ScramExchange {
    mechanism: ScramMechanism,
    password: String,
    client_nonce: String,
    client_first_bare: String,
    expected_server_signature: Option<Vec<u8>>,
}

impl ScramExchange {
    pub fn new(mechanism: ScramMechanism, username: &str, password: &str, nonce: &str) -> Self {
        // RFC 5802 saslname: ',' and '=' are escaped.
        let name = username.replace('=', "=3D").replace(',', "=2C");
        Self {
            mechanism,
            password: password.to_owned(),
            client_nonce: nonce.to_owned(),
            client_first_bare: format!("n={name},r={nonce}"),
            expected_server_signature: None,
        }
    }

    /// A fresh random nonce (printable, no ',').
    pub fn random_nonce() -> String {
        let mut bytes = [0u8; 24];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .expect("system random source");
        BASE64.encode(bytes)
    }

    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare).into_bytes()
    }

    /// The client-final message for the server's first message, with the proof.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<Vec<u8>, String> {
        let server_first =
            std::str::from_utf8(server_first).map_err(|_| "server-first is not UTF-8")?;
        let field = |name: char| {
            server_first
                .split(',')
                .find_map(|part| part.strip_prefix(name)?.strip_prefix('='))
        };
        if let Some(error) = field('e') {
            return Err(format!("server refused: {error}"));
        }
        let nonce = field('r').ok_or("server-first without nonce")?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err("server nonce does not extend the client nonce".into());
        }
        let salt = BASE64
            .decode(field('s').ok_or("server-first without salt")?)
            .map_err(|_| "salt is not base64")?;
        let iterations: u32 = field('i')
            .ok_or("server-first without iteration count")?
            .parse()
            .map_err(|_| "iteration count is not a number")?;
        let iterations = std::num::NonZeroU32::new(iterations).ok_or("iteration count is zero")?;
        let (algorithm, hmac_algorithm, digest_algorithm, length) = match self.mechanism {
            ScramMechanism::Sha256 => (
                pbkdf2::PBKDF2_HMAC_SHA256,
                hmac::HMAC_SHA256,
                &digest::SHA256,
                32,
            ),
            ScramMechanism::Sha512 => (
                pbkdf2::PBKDF2_HMAC_SHA512,
                hmac::HMAC_SHA512,
                &digest::SHA512,
                64,
            ),
        };
        let mut salted = vec![0u8; length];
        pbkdf2::derive(
            algorithm,
            iterations,
            &salt,
            self.password.as_bytes(),
            &mut salted,
        );
        let salted_key = hmac::Key::new(hmac_algorithm, &salted);
        let client_key = hmac::sign(&salted_key, b"Client Key");
        let stored_key = digest::digest(digest_algorithm, client_key.as_ref());
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let client_signature = hmac::sign(
            &hmac::Key::new(hmac_algorithm, stored_key.as_ref()),
            auth_message.as_bytes(),
        );
        let proof: Vec<u8> = client_key
            .as_ref()
            .iter()
            .zip(client_signature.as_ref())
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = hmac::sign(&salted_key, b"Server Key");
        let server_signature = hmac::sign(
            &hmac::Key::new(hmac_algorithm, server_key.as_ref()),
            auth_message.as_bytes(),
        );
        self.expected_server_signature = Some(server_signature.as_ref().to_vec());
        Ok(format!("{without_proof},p={}", BASE64.encode(proof)).into_bytes())
    }

    /// Checks the server's final message: it must prove it knows the password too.
    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(server_final).map_err(|_| "server-final is not UTF-8")?;
        if let Some(error) = text.strip_prefix("e=") {
            return Err(format!("server refused: {error}"));
        }
        let signature = text
            .split(',')
            .find_map(|part| part.strip_prefix("v="))
            .ok_or("server-final without verifier")?;
        let signature = BASE64
            .decode(signature)
            .map_err(|_| "server verifier is not base64")?;
        match &self.expected_server_signature {
            Some(expected) if *expected == signature => Ok(()),
            _ => {
                Err("server signature does not match: the server does not know the password".into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scram_sha_256_matches_rfc_7677() {
        let mut exchange = ScramExchange::new(
            ScramMechanism::Sha256,
            "user",
            "pencil",
            "rOprNGfwEbeRWgbNEkqO",
        );
        assert_eq!(exchange.client_first(), b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let client_final = exchange.client_final(server_first).unwrap();
        assert_eq!(
            String::from_utf8(client_final).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        exchange
            .verify_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
        assert!(exchange.verify_server_final(b"v=AAAA").is_err());
        assert!(exchange.verify_server_final(b"e=invalid-proof").is_err());
    }

    #[test]
    fn scram_refuses_bad_server_first_messages() {
        let cases: [&[u8]; 5] = [
            b"r=other-nonce,s=QSXCR+Q6sek8bf92,i=4096",
            b"r=abc,s=QSXCR+Q6sek8bf92,i=4096",
            b"r=abcdef,s=QSXCR+Q6sek8bf92",
            b"r=abcdef,s=***,i=4096",
            b"e=unknown-user",
        ];
        for server_first in cases {
            let mut exchange = ScramExchange::new(ScramMechanism::Sha512, "u", "p", "abc");
            assert!(
                exchange.client_final(server_first).is_err(),
                "{}",
                String::from_utf8_lossy(server_first)
            );
        }
    }

    #[test]
    fn usernames_are_escaped_and_plain_is_nul_separated() {
        let exchange = ScramExchange::new(ScramMechanism::Sha256, "a=b,c", "p", "n");
        assert_eq!(exchange.client_first(), b"n,,n=a=3Db=2Cc,r=n");
        assert_eq!(plain_message("u", "p"), b"\0u\0p");
    }
}
