//! A DNS provider that is a command: `CMD add NAME VALUE` and `CMD del NAME VALUE` (NAME the
//! record's name with its trailing dot), run by `/bin/sh`, with certbot's `CERTBOT_DOMAIN` and
//! `CERTBOT_VALIDATION` in its environment (so certbot's manual hooks work as they are) and
//! `ACME_NGINX_DNS_ACTION`, `ACME_NGINX_DNS_NAME`, `ACME_NGINX_DNS_ZONE`. A command whose
//! program is a file another user could write does not run.

use std::process::Stdio;
use std::time::Duration;

/// How long one hook call may take before it is killed.
pub const DNS_HOOK_TIMEOUT: Duration = Duration::from_secs(120);
/// How much of a failing hook's output a message quotes.
const OUTPUT_QUOTED: usize = 400;

/// A failed hook call.
#[derive(Debug, thiserror::Error)]
pub enum HookCallError {
    #[error("the DNS hook {command:?} does not run: {why}")]
    Unsafe { command: String, why: String },
    #[error("cannot start the DNS hook {command:?}: {source}")]
    Start {
        command: String,
        source: std::io::Error,
    },
    #[error("the DNS hook {command:?} {action} {name} was killed after {} s", DNS_HOOK_TIMEOUT.as_secs())]
    Timeout {
        command: String,
        action: &'static str,
        name: String,
    },
    #[error("the DNS hook {command:?} {action} {name} failed ({status}): {output}")]
    Failed {
        command: String,
        action: &'static str,
        name: String,
        status: String,
        output: String,
    },
}

/// The hook command.
#[derive(Debug, Clone)]
pub struct DnsHook {
    pub command: String,
}

impl DnsHook {
    /// Runs `CMD add|del NAME VALUE`; `domain` is the identifier being validated.
    pub async fn call(
        &self,
        add: bool,
        name: &str,
        value: &str,
        zone: &str,
        domain: &str,
    ) -> Result<(), HookCallError> {
        let action = if add { "add" } else { "del" };
        let command = self.command.clone();
        if let Some(program) = command
            .split_whitespace()
            .next()
            .filter(|p| p.contains('/'))
        {
            if let Some(why) = crate::fsutil::unsafe_to_run(std::path::Path::new(program)) {
                return Err(HookCallError::Unsafe { command, why });
            }
        }
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(format!("{command} \"$@\""))
            .arg("acme-nginx-dns-hook")
            .args([action, name, value])
            .env("CERTBOT_DOMAIN", domain)
            .env("CERTBOT_VALIDATION", value)
            .env("ACME_NGINX_DNS_ACTION", action)
            .env("ACME_NGINX_DNS_NAME", name)
            .env("ACME_NGINX_DNS_ZONE", zone)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let child = cmd.output();
        let out = match tokio::time::timeout(DNS_HOOK_TIMEOUT, child).await {
            Err(_) => {
                return Err(HookCallError::Timeout {
                    command,
                    action,
                    name: name.to_owned(),
                })
            }
            Ok(Err(source)) => return Err(HookCallError::Start { command, source }),
            Ok(Ok(out)) => out,
        };
        if out.status.success() {
            return Ok(());
        }
        let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stdout));
        let text: String = text.trim().chars().take(OUTPUT_QUOTED).collect();
        Err(HookCallError::Failed {
            command,
            action,
            name: name.to_owned(),
            status: out.status.to_string(),
            output: crate::acme::escape_controls(if text.is_empty() { "no output" } else { &text }),
        })
    }
}
