//! `acme-nginx watch`: the service loop (see [`acme_nginx::lifecycle::watch`]); SIGHUP re-reads
//! the configuration file through the same options.

use acme_nginx::lifecycle::watch::watch;
use clap::Args;

use super::options::Options;
use super::{CmdResult, Context, Exit};

#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub options: Options,
}

pub async fn run(ctx: &Context, args: WatchArgs) -> CmdResult {
    let settings = args.options.settings(ctx)?;
    let (options, ctx2) = (args.options.clone(), ctx.clone());
    let reload = Box::new(move || {
        options
            .settings(&ctx2)
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
    });
    watch(settings, reload).await?;
    Ok(Exit::Ok)
}
