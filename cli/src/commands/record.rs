//! `pgtrail record`: an agent and a collector in one process. Snapshots go
//! straight from the agent's channel into the collector's ingestor, and
//! the History service answers on --listen as a collector would.

use anyhow::Context;
use pgtrail_agent::config::local_host_name;
use pgtrail_agent::{AgentBuilder, InstanceConfig, Sampler};
use pgtrail_collector::Collector;
use tracing::{error, info};

use crate::args::RecordArgs;
use crate::time::parse_duration;

pub async fn run(args: RecordArgs) -> anyhow::Result<()> {
    let interval = parse_duration(&args.interval)?;
    if interval < pgtrail_agent::MIN_INTERVAL {
        anyhow::bail!(
            "--interval {} is too short: at least {}",
            args.interval,
            humantime::format_duration(pgtrail_agent::MIN_INTERVAL)
        );
    }
    let mut instances: Vec<InstanceConfig> = Vec::new();
    for url in &args.pg {
        let instance = InstanceConfig::parse(None, url)?;
        if instances.iter().any(|i| i.name == instance.name) {
            anyhow::bail!(
                "two servers share the port {}: record them with separate agents, or use a config with distinct names",
                instance.name
            );
        }
        instances.push(instance);
    }
    // Fail fast, with the server's own words, on a server we cannot sample.
    for instance in &instances {
        let mut probe = Sampler::new(instance.clone(), 16)?;
        probe
            .sample()
            .await
            .map_err(|e| anyhow::anyhow!(pgtrail_agent::error_chain(&e)))?;
    }
    let retention = pgtrail_collector::Retention {
        samples: parse_duration(&args.keep_samples)?,
        history: parse_duration(&args.keep_history)?,
        ..Default::default()
    };
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("cannot create the data directory {}", args.data.display()))?;
    let collector = Collector::open(&args.data)?;
    let listener = Collector::bind(&args.listen.to_string()).await?;
    let host = args.host_name.clone().unwrap_or_else(local_host_name);

    let mut builder = AgentBuilder::new().interval(interval);
    for instance in instances {
        builder = builder.instance(instance);
    }
    let (agent, mut snapshots) = builder.spawn()?;
    let ingestor = collector.ingestor();
    let ingest_host = host.clone();
    let ingesting = tokio::spawn(async move {
        while let Some(snapshot) = snapshots.recv().await {
            if let Err(e) = ingestor.ingest(&ingest_host, &snapshot).await {
                error!(error = %pgtrail_agent::error_chain(&e), "cannot store a snapshot");
            }
        }
    });
    info!(
        host = %host,
        data = %args.data.display(),
        listen = %args.listen,
        "recording; query with e.g. `pgtrail peaks` (Ctrl-C stops)"
    );
    let expiring = retention.spawn(collector.store());
    let served = collector
        .serve(listener, pgtrail_collector::shutdown_signal())
        .await;
    expiring.abort();
    agent.shutdown().await;
    let _ = ingesting.await;
    collector.ingestor().close().await?;
    served?;
    info!("stopped; history kept in {}", args.data.display());
    Ok(())
}
