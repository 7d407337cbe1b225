//! Secrets at rest: AES-256-GCM with a fresh random 96-bit nonce per
//! encryption, associated data binding a ciphertext to its row, and a key id
//! stored beside it so the key can be rotated later.
//!
//! Also the constant-time comparison used for bootstrap keys.

use aes_gcm::aead::{Aead, Generate, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A sealed secret as stored in Postgres.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub ciphertext: Vec<u8>,
    pub nonce: Vec<u8>,
    pub key_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("secret was sealed with key {0}, which is not loaded")]
    UnknownKey(String),
    #[error("secret cannot be decrypted (wrong key, row or tampered data)")]
    Decrypt,
    #[error("encryption failed")]
    Encrypt,
}

/// The loaded key and its id.
#[derive(Clone)]
pub struct SecretBox {
    cipher: Aes256Gcm,
    key_id: String,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretBox")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl SecretBox {
    pub fn new(key: &[u8; 32]) -> Self {
        // The id is a fingerprint of the key, so no extra setting can drift
        // out of sync with it.
        let digest = Sha256::digest(key);
        let key_id = digest
            .iter()
            .take(4)
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        Self {
            cipher: Aes256Gcm::new(key.into()),
            key_id: format!("k-{key_id}"),
        }
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Encrypts `plaintext`, bound to `aad` (for example `integrations:<id>`).
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Sealed, CryptoError> {
        let nonce = Nonce::generate();
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| CryptoError::Encrypt)?;
        Ok(Sealed {
            ciphertext,
            nonce: nonce.to_vec(),
            key_id: self.key_id.clone(),
        })
    }

    pub fn open(&self, sealed: &Sealed, aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.key_id != self.key_id {
            return Err(CryptoError::UnknownKey(sealed.key_id.clone()));
        }
        let nonce = Nonce::try_from(sealed.nonce.as_slice()).map_err(|_| CryptoError::Decrypt)?;
        self.cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: &sealed.ciphertext,
                    aad,
                },
            )
            .map_err(|_| CryptoError::Decrypt)
    }
}

/// Compares two secrets without leaking where they differ through timing.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Hash first so that the length of the expected key does not leak either.
    let a = Sha256::digest(a);
    let b = Sha256::digest(b);
    a.ct_eq(&b).into()
}

/// `n` random bytes from the OS generator.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    rand::fill(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_with_fresh_nonces() {
        let b = SecretBox::new(&[7u8; 32]);
        let s1 = b.seal(b"hunter2", b"integrations:1").expect("seal");
        let s2 = b.seal(b"hunter2", b"integrations:1").expect("seal");
        assert_ne!(s1.nonce, s2.nonce);
        assert_ne!(s1.ciphertext, s2.ciphertext);
        assert_eq!(s1.nonce.len(), 12);
        assert_eq!(b.open(&s1, b"integrations:1").expect("open"), b"hunter2");
    }

    #[test]
    fn open_refuses_other_row_other_key_and_tampering() {
        let b = SecretBox::new(&[7u8; 32]);
        let s = b.seal(b"hunter2", b"integrations:1").expect("seal");
        assert!(matches!(
            b.open(&s, b"integrations:2"),
            Err(CryptoError::Decrypt)
        ));
        let other = SecretBox::new(&[8u8; 32]);
        assert!(matches!(
            other.open(&s, b"integrations:1"),
            Err(CryptoError::UnknownKey(_))
        ));
        let mut tampered = s.clone();
        tampered.ciphertext[0] ^= 1;
        assert!(matches!(
            b.open(&tampered, b"integrations:1"),
            Err(CryptoError::Decrypt)
        ));
    }

    #[test]
    fn constant_time_eq_compares_values() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
