//! The engine comparison (benches/engines.sh).
//!
//! `engines worker PORT`: a datafusion-distributed worker on 127.0.0.1:PORT.
//! `engines run ENGINE TABLE_DIR PARTITIONS QUERY…`: runs each query over the Parquet table
//! under TABLE_DIR (in `score_date=…` directories) and prints, a line each, the engine, the
//! seconds, and the result as one line of text. ENGINE is `local` (DataFusion in this process),
//! `dd=PORT,PORT,…` (datafusion-distributed over those workers) or `ballista=df://HOST:PORT`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use async_trait::async_trait;
use ballista::prelude::{SessionConfigExt, SessionContextExt};
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::common::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use datafusion_distributed::{DistributedExt, SessionStateBuilderExt, Worker, WorkerResolver};
use url::Url;

/// The workers of a datafusion-distributed query: ports on this machine.
#[derive(Clone)]
struct Ports(Vec<u16>);

#[async_trait]
impl WorkerResolver for Ports {
    fn get_urls(&self) -> Result<Vec<Url>, DataFusionError> {
        self.0
            .iter()
            .map(|p| {
                Url::parse(&format!("http://127.0.0.1:{p}"))
                    .map_err(|e| DataFusionError::External(Box::new(e)))
            })
            .collect()
    }
}

async fn context(
    engine: &str,
    partitions: usize,
) -> Result<SessionContext, Box<dyn std::error::Error>> {
    Ok(if engine == "local" {
        SessionContext::new_with_config(SessionConfig::new().with_target_partitions(partitions))
    } else if let Some(ports) = engine.strip_prefix("dd=") {
        let ports = ports
            .split(',')
            .map(str::parse)
            .collect::<Result<Vec<u16>, _>>()?;
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_config(SessionConfig::new().with_target_partitions(partitions))
            .with_distributed_worker_resolver(Ports(ports))
            .with_distributed_planner()
            .build();
        SessionContext::from(state)
    } else if let Some(url) = engine.strip_prefix("ballista=") {
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_config(SessionConfig::new_with_ballista().with_target_partitions(partitions))
            .build();
        SessionContext::remote_with_state(url, state).await?
    } else {
        return Err(format!("unknown engine {engine}: local, dd=PORTS or ballista=URL").into());
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("worker") => {
            let port: u16 = args[2].parse()?;
            tonic::transport::Server::builder()
                .add_service(Worker::default().into_worker_server())
                .serve(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
                .await?;
        }
        Some("run") if args.len() > 5 => {
            let (engine, dir, partitions) = (&args[2], &args[3], args[4].parse::<usize>()?);
            let ctx = context(engine, partitions).await?;
            // The files hold `score_date` themselves: the directories named by it are not
            // read as partition columns.
            ctx.register_parquet("scores", dir, ParquetReadOptions::default())
                .await?;
            for query in &args[5..] {
                let started = Instant::now();
                let batches = ctx.sql(query).await?.collect().await?;
                let seconds = started.elapsed().as_secs_f64();
                let table = pretty_format_batches(&batches)?.to_string();
                let rows: Vec<&str> = table
                    .lines()
                    .filter(|l| l.starts_with('|'))
                    .skip(1)
                    .collect();
                println!(
                    "{engine}\t{seconds:.2}\t{}",
                    rows.join(" ")
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
        }
        _ => return Err("engines worker PORT | engines run ENGINE DIR PARTITIONS QUERY…".into()),
    }
    Ok(())
}
