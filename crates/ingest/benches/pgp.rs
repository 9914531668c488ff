//! Decrypting an OpenPGP-encrypted export file as the staging does (`PgpKey::decrypt_file`:
//! streaming, rpgp), timed; `benches/pgp.sh` runs it against `gpg --decrypt` on the same file.
//!   pgp ENCRYPTED_FILE ARMORED_SECRET_KEY_FILE OUT_FILE   (passphrase in SCORELAND_PGP_PASSPHRASE)

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [encrypted, key, out] = &args[..] else {
        return Err("usage: pgp ENCRYPTED_FILE ARMORED_SECRET_KEY_FILE OUT_FILE".into());
    };
    let passphrase = std::env::var("SCORELAND_PGP_PASSPHRASE")?;
    let key = scoreland_ingest::PgpKey::from_armored(
        &std::fs::read_to_string(key)?,
        scoreland_ingest::Secret::new(passphrase),
    )?;
    let t = Instant::now();
    let bytes = key.decrypt_file(encrypted.as_ref(), out.as_ref())?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{{\"bytes\": {bytes}, \"seconds\": {secs:.3}, \"mb_per_s\": {:.1}}}",
        bytes as f64 / 1e6 / secs
    );
    Ok(())
}
