//! The account key and the JSON Web Signatures every ACME request carries
//! (RFC 8555 §6.2, RFC 7515/7518/7638): ES256 over P-256, flattened JSON
//! serialization, `jwk` for a new account and `kid` afterwards.

use std::path::Path;

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};
use sha2::Digest;

use crate::AcmeError;

/// The ACME account's key pair (kept as PKCS#8 PEM in the state dir).
pub struct AccountKey {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

const PEM_LABEL: &str = "PRIVATE KEY";

impl AccountKey {
    /// Reads the key at `path`, or makes one and writes it there (0600)
    /// when there is none yet. A file that is there but unreadable is an
    /// error, never silently replaced: the account is tied to it.
    pub fn load_or_create(path: &Path) -> Result<AccountKey, AcmeError> {
        let rng = SystemRandom::new();
        let io = |source| AcmeError::State {
            path: path.to_path_buf(),
            source,
        };
        let der = match std::fs::read_to_string(path) {
            Ok(text) => pem_decode(&text, PEM_LABEL).ok_or_else(|| AcmeError::AccountKey {
                path: path.to_path_buf(),
                why: "no PKCS#8 `PRIVATE KEY` PEM block in it".into(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|_| AcmeError::Crypto("generating the account key"))?;
                let der = doc.as_ref().to_vec();
                crate::files::write_private(path, pem_encode(&der, PEM_LABEL).as_bytes())
                    .map_err(io)?;
                der
            }
            Err(e) => return Err(io(e)),
        };
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng).map_err(
            |e| AcmeError::AccountKey {
                path: path.to_path_buf(),
                why: format!("not a P-256 ECDSA key ({e}); move it away to make a new account"),
            },
        )?;
        Ok(AccountKey { pair, rng })
    }

    /// The public key as a JWK, members in the order RFC 7638 hashes them.
    pub fn jwk(&self) -> Value {
        let point = self.pair.public_key().as_ref(); // 0x04 || x || y
        json!({
            "crv": "P-256",
            "kty": "EC",
            "x": b64url(&point[1..33]),
            "y": b64url(&point[33..65]),
        })
    }

    /// RFC 7638 thumbprint: the second half of every key authorization.
    pub fn thumbprint(&self) -> String {
        // Written by hand: members sorted, no whitespace, as 7638 asks,
        // whatever serde_json's map ordering is built with.
        let jwk = self.jwk();
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            jwk["x"].as_str().unwrap_or_default(),
            jwk["y"].as_str().unwrap_or_default()
        );
        b64url(&sha2::Sha256::digest(canonical.as_bytes()))
    }

    /// A flattened JWS of `payload` (None: POST-as-GET, an empty payload).
    pub fn sign(
        &self,
        url: &str,
        nonce: &str,
        kid: Option<&str>,
        payload: Option<&Value>,
    ) -> Result<Vec<u8>, AcmeError> {
        let mut protected = json!({"alg": "ES256", "nonce": nonce, "url": url});
        match kid {
            Some(k) => protected["kid"] = Value::String(k.to_string()),
            None => protected["jwk"] = self.jwk(),
        }
        let protected = b64url(protected.to_string().as_bytes());
        let payload = match payload {
            Some(p) => b64url(p.to_string().as_bytes()),
            None => String::new(),
        };
        let signed = format!("{protected}.{payload}");
        let sig = self
            .pair
            .sign(&self.rng, signed.as_bytes())
            .map_err(|_| AcmeError::Crypto("signing a request"))?;
        Ok(json!({
            "protected": protected,
            "payload": payload,
            "signature": b64url(sig.as_ref()),
        })
        .to_string()
        .into_bytes())
    }
}

/// base64url without padding (RFC 7515 §2).
pub fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn b64_decode(text: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    };
    let clean: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c)? << (18 - 6 * i);
        }
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

fn pem_encode(der: &[u8], label: &str) -> String {
    let b64: String = {
        let url = b64url(der);
        let mut s: String = url
            .chars()
            .map(|c| match c {
                '-' => '+',
                '_' => '/',
                c => c,
            })
            .collect();
        while !s.len().is_multiple_of(4) {
            s.push('=');
        }
        s
    };
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn pem_decode(text: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    b64_decode(&text[start..stop])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_rfc4648_vectors() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(b64url(raw.as_bytes()), enc);
            assert_eq!(b64_decode(enc).unwrap(), raw.as_bytes());
        }
        // The url alphabet, not + and /.
        assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn pem_round_trips() {
        let der: Vec<u8> = (0..=255u8).collect();
        let pem = pem_encode(&der, "PRIVATE KEY");
        assert!(pem.lines().all(|l| l.len() <= 64));
        assert_eq!(pem_decode(&pem, "PRIVATE KEY").unwrap(), der);
    }

    #[test]
    fn the_key_is_kept_and_signatures_verify() {
        let dir = std::env::temp_dir().join(format!("handoff-acme-jws-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("account.key");
        let a = AccountKey::load_or_create(&path).unwrap();
        let b = AccountKey::load_or_create(&path).unwrap();
        assert_eq!(a.thumbprint(), b.thumbprint(), "the same key is read back");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "only its owner may read the account key");

        let body = a
            .sign("https://ca/new", "n0", None, Some(&json!({"a": 1})))
            .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        let protected: Value =
            serde_json::from_slice(&b64_decode(v["protected"].as_str().unwrap()).unwrap()).unwrap();
        assert_eq!(protected["alg"], "ES256");
        assert_eq!(protected["nonce"], "n0");
        assert_eq!(protected["jwk"]["crv"], "P-256");
        let signed = format!(
            "{}.{}",
            v["protected"].as_str().unwrap(),
            v["payload"].as_str().unwrap()
        );
        let sig = b64_decode(v["signature"].as_str().unwrap()).unwrap();
        assert_eq!(sig.len(), 64, "ES256 is r || s, 32 bytes each");
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_FIXED,
            a.pair.public_key().as_ref(),
        );
        public.verify(signed.as_bytes(), &sig).unwrap();

        // POST-as-GET: empty payload, and kid instead of jwk.
        let body = a
            .sign("https://ca/o", "n1", Some("https://ca/acct/1"), None)
            .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["payload"], "");
        let protected: Value =
            serde_json::from_slice(&b64_decode(v["protected"].as_str().unwrap()).unwrap()).unwrap();
        assert_eq!(protected["kid"], "https://ca/acct/1");
        assert!(protected.get("jwk").is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_damaged_key_file_is_an_error_not_replaced() {
        let dir = std::env::temp_dir().join(format!("handoff-acme-bad-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("account.key");
        std::fs::write(&path, "not a key").unwrap();
        let e = AccountKey::load_or_create(&path).err().unwrap();
        assert!(e.to_string().contains("account.key"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a key");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
