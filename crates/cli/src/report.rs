//! `scoreland report`: the HTML report of the warehouse's newest nights.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use crate::Failure;

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub warehouse: crate::args::WarehouseArg,
    /// The HTML file to write (replaced whole).
    #[arg(long, default_value = "report.html")]
    pub out: PathBuf,
    /// How many of the newest score dates the charts over time cover.
    #[arg(long, default_value_t = 30)]
    pub nights: usize,
}

pub async fn report(args: ReportArgs) -> Result<u8, Failure> {
    let warehouse = args.warehouse.open()?;
    write(&warehouse, &args.out, args.nights).await?;
    eprintln!("report written to {}", args.out.display());
    Ok(0)
}

/// Renders the report and puts it at `out` whole (a temporary file renamed into place).
pub async fn write(
    warehouse: &scoreland_sink::Warehouse,
    out: &Path,
    nights: usize,
) -> anyhow::Result<()> {
    let html = scoreland_serve::report::render(warehouse, nights)
        .await
        .context("reading the warehouse for the report")?;
    // Readable by others: the report is made to be published by a web server or a shared
    // folder, and holds summaries, not scores.
    replace_whole(out, html.as_bytes())
}

/// Puts `bytes` at `out` whole, readable by others (mode 0644): written into a temporary file
/// beside it (the owner's alone until then), then renamed over it, so a reader (a web server,
/// node_exporter's textfile collector) never sees half of it.
pub fn replace_whole(out: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("writing into {}", dir.display()))?;
    std::fs::write(tmp.path(), bytes).with_context(|| format!("writing {}", out.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("making {} readable", out.display()))?;
    }
    tmp.persist(out)
        .with_context(|| format!("replacing {}", out.display()))?;
    Ok(())
}
