//! OpenPGP-encrypted export files (AEP encrypts a dataset export's files with the user's public
//! key when the destination asks for it): decrypted while staging, streaming, with the private
//! key and passphrase the pipeline's environment holds. A wrong key, a wrong passphrase or a
//! tampered file (its integrity check fails at the end) is an error naming the file; what was
//! decrypted of it is removed, never staged.

use std::io::{BufReader, BufWriter, Write};
use std::path::Path;

use pgp::composed::{Deserializable, Message, SignedSecretKey};
use pgp::types::Password;

use crate::auth::Secret;

/// A private key to decrypt export files with, and its passphrase.
pub struct PgpKey {
    key: SignedSecretKey,
    passphrase: Secret,
}

impl std::fmt::Debug for PgpKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgpKey").finish_non_exhaustive()
    }
}

impl PgpKey {
    /// The ASCII-armored private key `armored` (as `gpg --export-secret-keys --armor` writes
    /// it). The error says what is wrong, never the key.
    pub fn from_armored(armored: &str, passphrase: Secret) -> Result<PgpKey, String> {
        let (key, _) = SignedSecretKey::from_armor_single(armored.as_bytes()).map_err(|e| {
            format!("the PGP private key does not read as an armored private key ({e})")
        })?;
        Ok(PgpKey { key, passphrase })
    }

    /// Decrypts `src` into `dst` (through `dst.partial`, renamed once the whole message
    /// decrypted and its integrity check held); returns the plaintext's bytes.
    pub fn decrypt_file(&self, src: &Path, dst: &Path) -> Result<u64, String> {
        let partial = dst.with_extension("partial");
        let done = self.decrypt_into(src, &partial);
        match done {
            Ok(n) => std::fs::rename(&partial, dst)
                .map(|()| n)
                .map_err(|e| format!("{}: {e}", dst.display())),
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                Err(e)
            }
        }
    }

    fn decrypt_into(&self, src: &Path, dst: &Path) -> Result<u64, String> {
        let input = std::fs::File::open(src).map_err(|e| e.to_string())?;
        let (message, _) = Message::from_reader(BufReader::with_capacity(1 << 16, input))
            .map_err(|e| format!("not an OpenPGP message ({e})"))?;
        let password = Password::from(self.passphrase.expose());
        let mut plain = message
            .decrypt(&password, &self.key)
            .map_err(|e| format!("cannot be decrypted with the configured key ({e})"))?;
        if plain.is_compressed() {
            plain = plain
                .decompress()
                .map_err(|e| format!("its compressed contents do not read ({e})"))?;
        }
        let out = std::fs::File::create(dst).map_err(|e| format!("{}: {e}", dst.display()))?;
        let mut out = BufWriter::with_capacity(1 << 16, out);
        let n = std::io::copy(&mut plain, &mut out)
            .map_err(|e| format!("its contents fail to decrypt or their integrity check ({e})"))?;
        out.flush().map_err(|e| format!("{}: {e}", dst.display()))?;
        Ok(n)
    }
}

/// Whether an export file's name says it is encrypted (`.gpg`, `.pgp`), and its name without.
pub fn encrypted_name(name: &str) -> Option<&str> {
    name.strip_suffix(".gpg")
        .or_else(|| name.strip_suffix(".pgp"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = include_str!("../testdata/pgp-test-key.sec.asc");
    const PUBLIC: &str = include_str!("../testdata/pgp-test-key.pub.asc");

    fn encrypt(plain: &[u8]) -> Vec<u8> {
        use pgp::composed::{MessageBuilder, SignedPublicKey};
        use pgp::crypto::sym::SymmetricKeyAlgorithm;
        let (public, _) = SignedPublicKey::from_armor_single(PUBLIC.as_bytes()).unwrap();
        let mut rng = rand08::thread_rng();
        let mut b = MessageBuilder::from_bytes("", plain.to_vec())
            .seipd_v1(&mut rng, SymmetricKeyAlgorithm::AES256);
        b.encrypt_to_key(&mut rng, &public.public_subkeys[0])
            .unwrap();
        b.to_vec(&mut rng).unwrap()
    }

    #[test]
    fn a_file_decrypts_and_a_wrong_key_or_tampered_file_fails_with_nothing_left() {
        let dir = tempfile::tempdir().unwrap();
        let plain: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let src = dir.path().join("part-0.parquet.gpg");
        std::fs::write(&src, encrypt(&plain)).unwrap();
        let key = PgpKey::from_armored(SECRET, Secret::new("scoreland-test-passphrase")).unwrap();
        let dst = dir.path().join("part-0.parquet");
        assert_eq!(key.decrypt_file(&src, &dst).unwrap(), plain.len() as u64);
        assert_eq!(std::fs::read(&dst).unwrap(), plain);
        std::fs::remove_file(&dst).unwrap();

        let wrong = PgpKey::from_armored(SECRET, Secret::new("not-the-passphrase")).unwrap();
        let e = wrong.decrypt_file(&src, &dst).unwrap_err();
        assert!(e.contains("cannot be decrypted"), "{e}");
        assert!(!e.contains("not-the-passphrase"), "{e}");
        assert!(!dst.exists() && !dst.with_extension("partial").exists());

        // A byte flipped anywhere (the session key's packet, the first and the last bytes of the
        // encrypted data, where the integrity check's hash is) or the file cut short: an error,
        // and nothing of the plain text is left.
        let good = std::fs::read(&src).unwrap();
        let n = good.len();
        let mut tampered: Vec<Vec<u8>> = [3, 40, n / 4, n / 2, n - 30, n - 2, n - 1]
            .into_iter()
            .map(|at| {
                let mut bytes = good.clone();
                bytes[at] ^= 0x40;
                bytes
            })
            .collect();
        tampered.extend([good[..n - 1].to_vec(), good[..n / 2].to_vec()]);
        for (i, bytes) in tampered.into_iter().enumerate() {
            std::fs::write(&src, bytes).unwrap();
            assert!(key.decrypt_file(&src, &dst).is_err(), "tampered file {i}");
            assert!(!dst.exists() && !dst.with_extension("partial").exists());
        }

        std::fs::write(&src, b"PAR1 not a message").unwrap();
        assert!(
            key.decrypt_file(&src, &dst)
                .unwrap_err()
                .contains("not an OpenPGP message")
        );
        let e = PgpKey::from_armored("-----BEGIN PGP PUBLIC KEY BLOCK-----\n", Secret::new("x"))
            .unwrap_err();
        assert!(e.contains("does not read"), "{e}");
        assert_eq!(encrypted_name("a.parquet.gpg"), Some("a.parquet"));
        assert_eq!(encrypted_name("a.parquet"), None);
    }
}
