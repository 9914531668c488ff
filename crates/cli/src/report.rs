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
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("writing into {}", dir.display()))?;
    std::fs::write(tmp.path(), html).with_context(|| format!("writing {}", out.display()))?;
    // Readable by others (a temporary file is the owner's alone): the report is made to be
    // published by a web server or a shared folder, and holds summaries, not scores.
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
