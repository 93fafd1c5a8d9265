//! `acme-nginx account register|show|update|deactivate|rollover`: the account behind every order.

use std::path::PathBuf;

use acme_nginx::acme::{self, Account, KeyPair, KeyType, NewAccountOptions};
use acme_nginx::lifecycle;
use acme_nginx::lifecycle::account::{contact_urls, write_state};
use clap::{Args, Subcommand};
use serde_json::json;

use super::{output, CliError, CmdResult, Context, Exit};

#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// Create an account at the CA and save it to a state file.
    Register(RegisterArgs),
    /// Show the account the state file holds.
    Show(StateArg),
    /// Replace the account's contact addresses.
    Update(UpdateArgs),
    /// Deactivate the account for good.
    Deactivate(StateArg),
    /// Replace the account key (RFC 8555 key rollover) and save the new one.
    Rollover(RolloverArgs),
}

#[derive(Debug, Args)]
pub struct StateArg {
    /// The account state file (JSON, mode 0600).
    #[arg(long, value_name = "FILE")]
    pub state: PathBuf,
}

#[derive(Debug, Args)]
pub struct RegisterArgs {
    #[command(flatten)]
    pub state: StateArg,
    /// Contact email address (repeatable).
    #[arg(long = "email", value_name = "EMAIL")]
    pub emails: Vec<String>,
    /// Agree to the CA's terms of service.
    #[arg(long)]
    pub agree_tos: bool,
    /// External account binding key id (CAs that require EAB: ZeroSSL, step-ca, ...).
    #[arg(long, value_name = "KID")]
    pub eab_kid: Option<String>,
    /// External account binding HMAC key, base64url as the CA gave it, in a file only root
    /// can read (a regular file of root's, mode 0600, no symlink).
    #[arg(
        long,
        value_name = "FILE",
        requires = "eab_kid",
        conflicts_with = "eab_hmac_key"
    )]
    pub eab_hmac_key_file: Option<std::path::PathBuf>,
    /// Deprecated: the HMAC key on the command line, where every local user sees it (`ps`).
    #[arg(long, value_name = "B64", requires = "eab_kid")]
    pub eab_hmac_key: Option<String>,
    /// The MAC algorithm of the external account binding.
    #[arg(long, value_name = "ALG", default_value = "HS256", value_parser = ["HS256", "HS384", "HS512"])]
    pub eab_algorithm: String,
    /// Account key type.
    #[arg(long, default_value = "p384", value_name = "p256|p384")]
    pub key_type: KeyType,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    #[command(flatten)]
    pub state: StateArg,
    /// Contact email address (repeatable; none clears the contacts).
    #[arg(long = "email", value_name = "EMAIL")]
    pub emails: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RolloverArgs {
    #[command(flatten)]
    pub state: StateArg,
    /// Type of the new account key.
    #[arg(long, default_value = "p384", value_name = "p256|p384")]
    pub key_type: KeyType,
}

pub async fn run(ctx: &Context, cmd: AccountCommand) -> CmdResult {
    match cmd {
        AccountCommand::Register(args) => register(ctx, args).await,
        AccountCommand::Show(args) => {
            let account = ctx.load_account(&args.state).await?;
            let resource = account.fetch().await?;
            report(ctx, &account, &resource)?;
            Ok(Exit::Ok)
        }
        AccountCommand::Update(args) => {
            let mut account = ctx.load_account(&args.state.state).await?;
            let resource = account.update_contact(contact_urls(&args.emails)?).await?;
            write_state(&args.state.state, &account.to_state())?;
            report(ctx, &account, &resource)?;
            Ok(Exit::Ok)
        }
        AccountCommand::Deactivate(args) => {
            let account = ctx.load_account(&args.state).await?;
            let resource = account.deactivate().await?;
            report(ctx, &account, &resource)?;
            Ok(Exit::Ok)
        }
        AccountCommand::Rollover(args) => {
            let mut account = ctx.load_account(&args.state.state).await?;
            let old = acme::thumbprint(account.key());
            account.rollover(KeyPair::generate(args.key_type)).await?;
            write_state(&args.state.state, &account.to_state())?;
            let new = acme::thumbprint(account.key());
            if ctx.json {
                output::json(
                    &json!({"account": account.url(), "old_thumbprint": old, "new_thumbprint": new}),
                )?;
            } else {
                output::line(format!(
                    "account {} now uses key {new} (was {old})",
                    account.url()
                ))?;
            }
            Ok(Exit::Ok)
        }
    }
}

async fn register(ctx: &Context, args: RegisterArgs) -> CmdResult {
    let path = &args.state.state;
    if path.exists() {
        return Err(CliError::Usage(format!(
            "{} exists already; it is left untouched (use `account show`)",
            path.display()
        )));
    }
    let contact = contact_urls(&args.emails)?;
    let client = ctx.client().await?;
    let meta = client.directory().meta.clone();
    if let Some(tos) = &meta.terms_of_service {
        if !args.agree_tos {
            return Err(CliError::Usage(format!(
                "the CA's terms of service must be agreed to: read {tos} and pass --agree-tos"
            )));
        }
    }
    if meta.external_account_required && args.eab_kid.is_none() {
        return Err(lifecycle::Error::EabRequired {
            directory: client.directory_url().to_owned(),
        }
        .into());
    }
    if args.eab_hmac_key.is_some() {
        tracing::warn!(
            "--eab-hmac-key puts the key where every local user sees it (ps, /proc); \
             put it in a file only root can read and pass --eab-hmac-key-file"
        );
    }
    let eab = super::options::eab_binding(
        args.eab_kid.as_deref(),
        args.eab_hmac_key_file.as_deref(),
        args.eab_hmac_key.as_deref(),
    )?
    .map(|(kid, key)| (kid, key.expose_line().unwrap_or_default().to_owned()));
    let opts = NewAccountOptions {
        contact,
        terms_of_service_agreed: args.agree_tos,
        eab,
        eab_algorithm: args
            .eab_algorithm
            .parse()
            .map_err(|e: acme::UnknownEabAlgorithm| super::CliError::Usage(e.to_string()))?,
    };
    let (account, resource) =
        Account::create(client, KeyPair::generate(args.key_type), &opts).await?;
    write_state(path, &account.to_state())?;
    report(ctx, &account, &resource)?;
    Ok(Exit::Ok)
}

fn report(
    ctx: &Context,
    account: &Account,
    resource: &acme::AccountResource,
) -> Result<(), CliError> {
    if ctx.json {
        output::json(&json!({
            "account": account.url(),
            "directory": account.client().directory_url(),
            "status": resource.status.as_str(),
            "contact": resource.contact,
            "key_type": account.key().key_type().to_string(),
            "thumbprint": acme::thumbprint(account.key()),
        }))
    } else {
        output::line(format!("account:   {}", account.url()))?;
        output::line(format!("directory: {}", account.client().directory_url()))?;
        output::line(format!("status:    {}", resource.status))?;
        output::line(format!("contact:   {}", resource.contact.join(", ")))?;
        output::line(format!(
            "key:       {} ({})",
            account.key().key_type(),
            acme::thumbprint(account.key())
        ))
    }
}
