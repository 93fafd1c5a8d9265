//! Plans: the server blocks grouped into one certificate per primary name (a block's first
//! enrollable name), with the block that answers the http-01 challenge and the blocks that get
//! the certificate.

use std::collections::BTreeMap;

use super::Error;
use crate::acme::KeyType;
use crate::challenge::route::Method;
use crate::nginx::discovery::{server_for_host, Scan, ServerBlock};
use crate::nginx::probe::loopback_for;
use serde::{Deserialize, Serialize};

/// The challenge type an operator chooses for names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Challenge {
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    #[serde(rename = "dns-01")]
    Dns01,
}

/// A challenge type name that is none of the two an operator may choose.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a challenge type (http-01 or dns-01)")]
pub struct UnknownChallenge(pub String);

impl std::str::FromStr for Challenge {
    type Err = UnknownChallenge;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "http-01" => Ok(Challenge::Http01),
            "dns-01" => Ok(Challenge::Dns01),
            other => Err(UnknownChallenge(other.to_owned())),
        }
    }
}

/// How names are proven: the solvers configured and the operator's choices.
#[derive(Debug, Clone, Copy)]
pub struct Proving<'a> {
    /// A DNS solver is configured: wildcards can be certified, dns-01 can be chosen.
    pub dns: bool,
    /// http-01 goes to a WebDAV server instead of this host's nginx.
    pub dav: bool,
    pub default: Challenge,
    pub per_name: &'a BTreeMap<String, Challenge>,
    /// Names left out by the operator: globs (`*.internal.example.org`), case-insensitive.
    pub exclude: &'a [String],
    /// The zones dns-01 may prove names in (see [`Proving::dns_refusal`]).
    pub dns_zones: &'a [String],
}

static NO_CHOICES: BTreeMap<String, Challenge> = BTreeMap::new();

impl Proving<'static> {
    /// Every name by http-01 through this host's nginx.
    pub fn webroot_only() -> Self {
        Proving {
            dns: false,
            dav: false,
            default: Challenge::Http01,
            per_name: &NO_CHOICES,
            exclude: &[],
            dns_zones: &[],
        }
    }
}

impl Proving<'_> {
    /// The method of one name: dns-01 for wildcards and for names the operator gives it
    /// (when a DNS solver is configured; IP addresses cannot take it, RFC 8738), else http-01
    /// through the WebDAV server if one is configured, else through this host's nginx.
    pub fn method_for(&self, name: &str) -> Method {
        if name.starts_with("*.") {
            return Method::Dns;
        }
        let ip = name.parse::<std::net::IpAddr>().is_ok();
        let choice = self.per_name.get(name).copied().unwrap_or(self.default);
        match choice {
            Challenge::Dns01 if self.dns && !ip => Method::Dns,
            _ if self.dav => Method::Dav,
            _ => Method::Webroot,
        }
    }

    /// The exclude pattern that leaves `name` out, if any.
    pub fn excluded_by(&self, name: &str) -> Option<&str> {
        let opts = glob::MatchOptions {
            case_sensitive: false,
            require_literal_separator: false,
            require_literal_leading_dot: false,
        };
        let name = name.trim_end_matches('.');
        self.exclude
            .iter()
            .find(|p| {
                glob::Pattern::new(p.trim_end_matches('.'))
                    .is_ok_and(|g| g.matches_with(name, opts))
            })
            .map(String::as_str)
    }

    /// The names of a block a certificate can hold: its enrollable names and, with a DNS
    /// solver, its wildcards (`*.example.org`, and the one `.example.org` stands for); names
    /// an exclude pattern matches are left out.
    pub fn block_names(&self, s: &ServerBlock) -> Vec<String> {
        let mut names = self.candidate_names(s);
        names.retain(|n| self.excluded_by(n).is_none());
        names
    }

    /// The names of a block left out by an exclude pattern, with the pattern.
    pub fn excluded_names<'s>(&'s self, s: &ServerBlock) -> Vec<(String, &'s str)> {
        self.candidate_names(s)
            .into_iter()
            .filter_map(|n| self.excluded_by(&n).map(|p| (n, p)))
            .collect()
    }

    fn candidate_names(&self, s: &ServerBlock) -> Vec<String> {
        let mut names = s.enrollable.clone();
        names.extend(
            self.wildcards(s)
                .into_iter()
                .filter(|w| self.dns_refusal(w, s).is_none()),
        );
        names
    }

    /// The wildcard names of a block a DNS solver could prove.
    fn wildcards(&self, s: &ServerBlock) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        if !self.dns {
            return out;
        }
        for k in &s.skipped {
            let n = k.name.to_ascii_lowercase();
            let n = n.trim_end_matches('.');
            if n.starts_with("*.")
                && crate::acme::is_valid_dns_name(n)
                && !s.enrollable.iter().any(|x| x == n)
                && !out.iter().any(|x| x == n)
            {
                out.push(n.to_owned());
            }
        }
        out
    }

    /// Why the operator's DNS credentials may not prove `name` of block `s`, if they may not.
    /// dns-01 proves a name with the operator's key, not with anything the name's requester
    /// controls, so who may ask for which names matters: with `[dns] zones`, only names inside
    /// those zones; without, only names of blocks defined in files root owns and no other user
    /// can write (a tenant's include cannot borrow root's key), plus the names `[challenges]`
    /// lists explicitly.
    pub fn dns_refusal(&self, name: &str, s: &ServerBlock) -> Option<String> {
        let bare = name.trim_start_matches("*.");
        if !self.dns_zones.is_empty() {
            let inside = self
                .dns_zones
                .iter()
                .any(|z| bare == z || bare.ends_with(&format!(".{z}")));
            return (!inside).then(|| {
                format!(
                    "{name} is outside the zones dns-01 may prove ([dns] zones: {})",
                    self.dns_zones.join(", ")
                )
            });
        }
        if self.per_name.contains_key(name) {
            return None;
        }
        crate::fsutil::writable_by_others(&s.file).map(|why| {
            format!(
                "{} (which defines this block) {why}: dns-01 proves a name with the operator's DNS key, \
                 so a name from a file another user controls takes it only when [dns] zones or \
                 [challenges] lists it",
                s.file.display()
            )
        })
    }

    /// The names of a block dns-01 may not prove (wildcards, and names that would take it),
    /// with why.
    pub fn dns_refused(&self, s: &ServerBlock) -> Vec<(String, String)> {
        let wanting: Vec<String> = s
            .enrollable
            .iter()
            .filter(|n| self.method_for(n) == Method::Dns)
            .cloned()
            .chain(self.wildcards(s))
            .collect();
        wanting
            .into_iter()
            .filter_map(|n| self.dns_refusal(&n, s).map(|why| (n, why)))
            .collect()
    }

    /// The method of one name of block `s`: [`Proving::method_for`], except that a name
    /// dns-01 may not prove there (see [`Proving::dns_refusal`]) takes http-01.
    pub fn method_in(&self, name: &str, s: &ServerBlock) -> Method {
        match self.method_for(name) {
            Method::Dns if self.dns_refusal(name, s).is_some() => {
                if self.dav {
                    Method::Dav
                } else {
                    Method::Webroot
                }
            }
            m => m,
        }
    }
}

/// One certificate to get: its names and the server blocks involved.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub primary: String,
    pub names: Vec<String>,
    /// Indices into the scan's servers.
    pub blocks: Vec<usize>,
    /// `file:line` of those blocks.
    pub block_locations: Vec<String>,
    /// The block whose plain-HTTP listener answers the challenge.
    pub challenge_block: Option<usize>,
    /// The blocks that get the certificate.
    pub install_blocks: Vec<usize>,
    /// Why this plan cannot be carried out.
    pub error: Option<String>,
    /// Named explicitly by the operator (failure backoff does not hold it back).
    pub named: bool,
    /// An IP address certificate (RFC 8738): its own order, with the CA's short-lived profile.
    pub ip_literal: bool,
    /// Names of these blocks left out of the certificate, and why.
    pub left_out: Vec<(String, String)>,
    /// The second certificate of blocks that serve an ECDSA and an RSA certificate (older
    /// clients get the RSA one): its key type. None for the block's first certificate.
    pub variant: Option<KeyType>,
    /// How each name is proven.
    pub methods: BTreeMap<String, Method>,
    /// nginx answers the names on no plain-HTTP port: a port-80 route (`--http-route`) would
    /// let http-01 through.
    pub needs_http_route: bool,
}

/// What a lineage of the RSA certificate of a hybrid block adds to its primary name (a name
/// holds no `_`, so it cannot clash with another name's lineage).
pub const RSA_SUFFIX: &str = "_rsa";

impl Plan {
    /// The lineage this plan's certificate lives in: the primary name, with [`RSA_SUFFIX`]
    /// for the RSA certificate of a hybrid block.
    pub fn lineage(&self) -> String {
        match self.variant {
            Some(_) => format!("{}{RSA_SUFFIX}", self.primary),
            None => self.primary.clone(),
        }
    }

    /// Which of the block's certificate pairs this plan's certificate takes (0 the first).
    pub fn slot(&self) -> usize {
        usize::from(self.variant.is_some())
    }

    /// True when a name is proven through this host's nginx (the plan needs its challenge
    /// block).
    pub fn uses_webroot(&self) -> bool {
        self.methods.values().any(|m| *m == Method::Webroot)
    }

    /// A host name to reach the plan's blocks with (SNI, Host): the primary name, or for a
    /// wildcard one a name it covers.
    pub fn probe_name(&self) -> String {
        match self.primary.strip_prefix("*.") {
            Some(base) => format!("{PROBE_LABEL}.{base}"),
            None => self.primary.clone(),
        }
    }
}

/// The label put in front of a wildcard primary name's base to probe its blocks with.
pub const PROBE_LABEL: &str = "acme-nginx-check";

/// The primary name a lineage belongs to, and whether it is a hybrid block's RSA lineage.
pub fn split_lineage(name: &str) -> (&str, bool) {
    match name.strip_suffix(RSA_SUFFIX) {
        Some(primary) => (primary, true),
        None => (name, false),
    }
}

/// The profile IP address certificates are ordered with (Let's Encrypt issues them only as
/// short-lived certificates).
pub const IP_PROFILE: &str = "shortlived";

/// Groups server blocks into plans. With `wanted` names, only the blocks holding one of them; a
/// wanted name in no block is an error that says why. The challenge is answered by the block
/// nginx picks for the primary name on `http_port` (the port the CA validates on): the name's
/// own block there, else that port's default server; a name nginx answers on no such port
/// cannot be validated and its plan says what to add.
pub fn plans(
    scan: &Scan,
    wanted: &[String],
    http_port: u16,
    proving: &Proving<'_>,
) -> Result<Vec<Plan>, Error> {
    let wanted: Vec<String> = wanted
        .iter()
        .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
        .collect();
    let block_names: Vec<Vec<String>> = scan
        .servers
        .iter()
        .map(|s| proving.block_names(s))
        .collect();
    for w in &wanted {
        if let Some(pattern) = proving.excluded_by(w) {
            return Err(Error::UnknownName {
                name: w.clone(),
                why: format!(" (excluded by the pattern {pattern:?})"),
            });
        }
        if !block_names.iter().any(|names| names.contains(w)) {
            let why = scan
                .servers
                .iter()
                .flat_map(|s| s.skipped.iter().map(move |k| (s, k)))
                .find(|(_, k)| k.name.eq_ignore_ascii_case(w))
                .map(|(s, k)| format!(" ({} skips it: {})", s.location(), k.reason))
                .unwrap_or_default();
            return Err(Error::UnknownName {
                name: w.clone(),
                why,
            });
        }
    }
    let mut by_primary: BTreeMap<String, Plan> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for (i, (s, enrollable)) in scan.servers.iter().zip(&block_names).enumerate() {
        if enrollable.is_empty()
            || (!wanted.is_empty() && !enrollable.iter().any(|n| wanted.contains(n)))
        {
            continue;
        }
        // IP addresses get certificates of their own (RFC 8738, short-lived): never merged
        // into a DNS certificate. A block serves one certificate, so an IP name that shares
        // its block with DNS names is left out.
        let is_ip = |n: &String| n.parse::<std::net::IpAddr>().is_ok();
        let dns: Vec<String> = enrollable.iter().filter(|n| !is_ip(n)).cloned().collect();
        let ips: Vec<String> = enrollable.iter().filter(|n| is_ip(n)).cloned().collect();
        let (names, ip_literal, left_out) = match (dns.is_empty(), ips.len()) {
            (false, _) => (
                dns,
                false,
                ips.iter()
                    .map(|ip| {
                        (ip.clone(), "an IP address needs a certificate of its own, and this server block also serves DNS names (a block serves one certificate)".to_owned())
                    })
                    .collect(),
            ),
            (true, 1) => (ips, true, Vec::new()),
            (true, _) => (
                ips[..1].to_vec(),
                true,
                ips[1..]
                    .iter()
                    .map(|ip| (ip.clone(), "one IP address certificate per server block".to_owned()))
                    .collect(),
            ),
        };
        let primary = names[0].clone();
        let plan = by_primary.entry(primary.clone()).or_insert_with(|| {
            order.push(primary.clone());
            Plan {
                primary: primary.clone(),
                names: Vec::new(),
                blocks: Vec::new(),
                block_locations: Vec::new(),
                challenge_block: None,
                install_blocks: Vec::new(),
                error: None,
                named: !wanted.is_empty(),
                ip_literal,
                left_out: Vec::new(),
                variant: None,
                methods: BTreeMap::new(),
                needs_http_route: false,
            }
        });
        plan.left_out.extend(left_out);
        // Wildcards only dns-01 could prove, where the operator's key may not: left out, saying
        // why.
        plan.left_out.extend(
            proving
                .dns_refused(s)
                .into_iter()
                .filter(|(n, _)| n.starts_with("*.")),
        );
        for n in &names {
            if !plan.names.contains(n) {
                plan.names.push(n.clone());
                plan.methods.insert(n.clone(), proving.method_in(n, s));
            }
        }
        plan.blocks.push(i);
        plan.block_locations.push(s.location());
    }
    let mut out = Vec::new();
    for primary in order {
        let Some(mut plan) = by_primary.remove(&primary) else {
            continue;
        };
        // Blocks that serve TLS now: HTTPS listeners, or a stream/mail server's TLS (direct or
        // STARTTLS). Only http blocks get new HTTPS listeners.
        let ssl = |i: &usize| {
            let s = &scan.servers[*i];
            s.listen.iter().any(|l| l.ssl) || s.starttls.is_some()
        };
        // The block nginx answers the first name proven through it with.
        let via_nginx = plan
            .names
            .iter()
            .find(|n| plan.methods.get(*n) == Some(&Method::Webroot))
            .unwrap_or(&plan.primary);
        plan.challenge_block = server_for_host(scan, via_nginx, http_port).filter(|&i| {
            scan.servers[i]
                .listen
                .iter()
                .any(|l| !l.ssl && l.port == http_port && loopback_for(l).is_some())
        });
        let with_ssl: Vec<usize> = plan.blocks.iter().copied().filter(|i| ssl(i)).collect();
        let own_plain: Vec<usize> = plan
            .blocks
            .iter()
            .copied()
            .filter(|&i| scan.servers[i].is_http() && scan.servers[i].listen.iter().any(|l| !l.ssl))
            .collect();
        let http_ssl = with_ssl.iter().any(|&i| scan.servers[i].is_http());
        // An http block that serves only plain HTTP gets an HTTPS listener, also when a
        // stream or mail server shares the certificate.
        plan.install_blocks = with_ssl;
        if !http_ssl {
            plan.install_blocks.extend(own_plain.first().copied());
            plan.install_blocks.sort_unstable();
        }
        // A block that serves two certificates (ECDSA and RSA, for older clients) keeps both:
        // a second plan gets an RSA certificate for the second pair.
        let hybrid = plan
            .install_blocks
            .iter()
            .any(|&i| scan.servers[i].ssl_certificates.len() >= 2);
        if plan.challenge_block.is_none() && plan.uses_webroot() {
            // A port-80 block goes after the name's http block: a name only a stream or mail
            // server holds has none to put it after.
            plan.needs_http_route = plan.blocks.iter().any(|&i| scan.servers[i].is_http());
            plan.error = Some(if plan.needs_http_route {
                format!(
                    "nginx answers {} on no plain-HTTP port {http_port}, where the CA validates http-01: add `listen {http_port};` to the server block at {}, or run enroll with --http-route to have acme-nginx add a port-{http_port} block for it (challenges answered, the rest redirected to HTTPS)",
                    plan.primary,
                    plan.block_locations.first().cloned().unwrap_or_default()
                )
            } else {
                format!(
                    "{} is a name of the {} server at {} only, and no http server answers it on port {http_port}, where the CA validates http-01: add an http server block (or a default server) listening on port {http_port}, or prove it by dns-01",
                    plan.primary,
                    plan.blocks
                        .first()
                        .map_or("stream", |&i| scan.servers[i].context.as_str()),
                    plan.block_locations.first().cloned().unwrap_or_default()
                )
            });
        }
        let companion = (hybrid && !plan.ip_literal).then(|| Plan {
            variant: Some(KeyType::Rsa2048),
            left_out: Vec::new(),
            ..plan.clone()
        });
        out.push(plan);
        out.extend(companion);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nginx::discovery::{scan, BuildDefaults};
    use crate::nginx::Config;
    use std::path::Path;

    fn scan_of(src: &str) -> Scan {
        let cfg = Config::parse_str(Path::new("/etc/nginx/nginx.conf"), src.as_bytes()).unwrap();
        scan(&cfg, &BuildDefaults::default())
    }

    #[test]
    fn blocks_are_grouped_by_primary_name() {
        let s = scan_of(
            "http {\n server { listen 80; server_name a.example.org www.a.example.org; return 301 https://$host$request_uri; }\n \
             server { listen 443 ssl; server_name a.example.org www.a.example.org; }\n \
             server { listen 80; server_name b.example.org; }\n \
             server { listen 443 ssl; server_name c.example.org; }\n \
             server { listen 80; server_name _; }\n}",
        );
        let p = plans(&s, &[], 80, &Proving::webroot_only()).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].primary, "a.example.org");
        assert_eq!(p[0].names, vec!["a.example.org", "www.a.example.org"]);
        assert_eq!(
            (p[0].challenge_block, p[0].install_blocks.clone()),
            (Some(0), vec![1])
        );
        assert_eq!(p[0].block_locations.len(), 2);
        assert!(!p[0].named);
        assert_eq!(
            (p[1].challenge_block, p[1].install_blocks.clone()),
            (Some(2), vec![2])
        );
        // c has no port-80 block of its own: nginx hands its requests to the port's default
        // server (the first block on 80), which answers its challenge.
        assert_eq!(p[2].challenge_block, Some(0));
        let only_b = plans(&s, &["B.example.org".into()], 80, &Proving::webroot_only()).unwrap();
        assert_eq!(only_b.len(), 1);
        assert!(only_b[0].named);
        let err = plans(&s, &["_".into()], 80, &Proving::webroot_only()).unwrap_err();
        assert!(err.to_string().contains("skips it"), "{err}");
        assert!(plans(
            &s,
            &["nope.example.org".into()],
            80,
            &Proving::webroot_only()
        )
        .is_err());
        // On port 8080 nothing listens: every plan says what to add.
        let p = plans(&s, &[], 8080, &Proving::webroot_only()).unwrap();
        assert!(p
            .iter()
            .all(|p| p.error.as_deref().unwrap().contains("add `listen 8080;`")));
    }

    /// A name an http block and mail servers share is one certificate installed in all of them
    /// (the http block gets its HTTPS listener); a name only a stream server has is proven
    /// through the port's default http server; with no http server on the port it says what
    /// to add, and offers no --http-route (which needs an http block to follow).
    #[test]
    fn stream_and_mail_servers_join_the_plans_of_their_names() {
        let s = scan_of(
            "http {\n server { listen 80; server_name mail.example.org; }\n}\n\
             mail {\n server_name mail.example.org; auth_http 127.0.0.1:9/a;\n \
             server { listen 587; protocol smtp; starttls on; }\n \
             server { listen 993 ssl; protocol imap; }\n}\n\
             stream {\n server { listen 8883 ssl; server_name mqtt.example.org; proxy_pass 127.0.0.1:1883; }\n}",
        );
        let p = plans(&s, &[], 80, &Proving::webroot_only()).unwrap();
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p[0].primary, "mail.example.org");
        assert_eq!(p[0].blocks, vec![0, 2, 3]);
        assert_eq!(p[0].install_blocks, vec![0, 2, 3]);
        assert_eq!(p[0].challenge_block, Some(0));
        assert_eq!(p[1].primary, "mqtt.example.org");
        assert_eq!(p[1].install_blocks, vec![1]);
        assert_eq!(p[1].challenge_block, Some(0), "port 80's default server");
        let p = plans(&s, &[], 8080, &Proving::webroot_only()).unwrap();
        assert!(!p[1].needs_http_route);
        let why = p[1].error.as_deref().unwrap();
        assert!(why.contains("of the stream server at"), "{why}");
        assert!(p[0].needs_http_route);
    }

    #[test]
    fn ip_addresses_get_certificates_of_their_own() {
        let s = scan_of(
            "http {\n server { listen 80; server_name a.example.org 192.0.2.1; }\n \
             server { listen 80; server_name 192.0.2.7 2001:db8::7; }\n}",
        );
        let p = plans(&s, &[], 80, &Proving::webroot_only()).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].names, vec!["a.example.org"]);
        assert!(!p[0].ip_literal);
        assert_eq!(p[0].left_out.len(), 1);
        assert_eq!(p[0].left_out[0].0, "192.0.2.1");
        assert_eq!(p[1].names, vec!["192.0.2.7"]);
        assert!(p[1].ip_literal);
        assert_eq!(p[1].left_out[0].0, "2001:db8::7");
    }

    #[test]
    fn wildcards_join_their_block_only_with_a_dns_solver() {
        let s = scan_of(
            "http {\n server { listen 443 ssl; server_name example.test *.example.test; }\n \
             server { listen 443 ssl; server_name .other.test; }\n \
             server { listen 443 ssl; server_name *.only.test; }\n \
             server { listen 80; server_name plain.test; }\n}",
        );
        let without = plans(&s, &[], 80, &Proving::webroot_only()).unwrap();
        assert_eq!(without.len(), 3);
        assert!(without
            .iter()
            .all(|p| p.names.iter().all(|n| !n.starts_with('*'))));

        let choices = BTreeMap::from([("plain.test".to_owned(), Challenge::Dns01)]);
        // The configuration is not on disk here: the zones say the key may prove these.
        let zones = ["example.test", "other.test", "only.test", "plain.test"].map(String::from);
        let proving = Proving {
            dns: true,
            dav: false,
            default: Challenge::Http01,
            per_name: &choices,
            exclude: &[],
            dns_zones: &zones,
        };
        let p = plans(&s, &[], 80, &proving).unwrap();
        let names: Vec<Vec<&str>> = p
            .iter()
            .map(|p| p.names.iter().map(String::as_str).collect())
            .collect();
        assert_eq!(
            names,
            vec![
                vec!["example.test", "*.example.test"],
                vec!["other.test", "*.other.test"],
                vec!["*.only.test"],
                vec!["plain.test"],
            ]
        );
        assert_eq!(p[0].methods["example.test"], Method::Webroot);
        assert_eq!(p[0].methods["*.example.test"], Method::Dns);
        // Only dns-01: no port-80 block is needed.
        assert_eq!(p[2].primary, "*.only.test");
        assert!(p[2].error.is_none(), "{:?}", p[2].error);
        assert_eq!(p[2].probe_name(), "acme-nginx-check.only.test");
        assert_eq!(p[3].methods["plain.test"], Method::Dns);
        assert!(p[3].error.is_none());
        // A wildcard can be asked for by name.
        assert_eq!(
            plans(&s, &["*.only.test".into()], 80, &proving)
                .unwrap()
                .len(),
            1
        );
        // With WebDAV, http-01 names go there; IP addresses never take dns-01.
        let dav = Proving {
            dav: true,
            ..proving
        };
        assert_eq!(dav.method_for("example.test"), Method::Dav);
        let all_dns = Proving {
            default: Challenge::Dns01,
            ..proving
        };
        assert_eq!(all_dns.method_for("192.0.2.1"), Method::Webroot);
        assert_eq!(all_dns.method_for("a.test"), Method::Dns);
    }

    #[test]
    fn excluded_names_and_ignored_blocks_are_left_out() {
        let s = scan_of(
            "http {\n server { listen 80; server_name a.example.org db.internal.example.org; }\n \
             server { listen 80; server_name b.example.org;\n  # acme-nginx: ignore\n }\n \
             server { listen 80; server_name X.Internal.example.org; }\n}",
        );
        assert_eq!(
            s.servers[1].ignored.as_deref(),
            Some("/etc/nginx/nginx.conf:4")
        );
        assert!(s.servers[1].enrollable.is_empty());
        assert!(s.servers[1].skipped[0]
            .reason
            .contains("acme-nginx: ignore"));
        let exclude = vec!["*.INTERNAL.example.org".to_owned()];
        let proving = Proving {
            exclude: &exclude,
            ..Proving::webroot_only()
        };
        let p = plans(&s, &[], 80, &proving).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].names, vec!["a.example.org"]);
        assert_eq!(
            proving.excluded_names(&s.servers[0]),
            vec![(
                "db.internal.example.org".to_owned(),
                "*.INTERNAL.example.org"
            )]
        );
        let err = plans(&s, &["x.internal.example.org".into()], 80, &proving).unwrap_err();
        assert!(err.to_string().contains("excluded"), "{err}");
        let err = plans(&s, &["b.example.org".into()], 80, &proving).unwrap_err();
        assert!(err.to_string().contains("acme-nginx: ignore"), "{err}");
    }

    /// Who may make root prove a name with the operator's DNS key: names of blocks in files
    /// only root can write; a tenant's file only for names [challenges] lists; with
    /// [dns] zones, exactly the names inside them. A refused wildcard is left out, saying why;
    /// a refused plain name falls back to http-01.
    #[test]
    fn dns01_is_only_for_names_the_operator_allows() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let root_file = dir.path().join("root.conf");
        let tenant_file = dir.path().join("tenant.conf");
        let block = "http { server { listen 80; server_name cust.example.test *.cust.example.test *.acme-delegate.test; } }\n";
        std::fs::write(&root_file, block).unwrap();
        std::fs::write(&tenant_file, block).unwrap();
        std::fs::set_permissions(&root_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&tenant_file, std::fs::Permissions::from_mode(0o666)).unwrap();
        let scan_of = |path: &std::path::Path| {
            let cfg = Config::parse_str(path, block.as_bytes()).unwrap();
            scan(&cfg, &BuildDefaults::default())
        };
        let (trusted, tenant) = (scan_of(&root_file), scan_of(&tenant_file));
        let all_dns = BTreeMap::new();
        let mut proving = Proving {
            dns: true,
            dav: false,
            default: Challenge::Dns01,
            per_name: &all_dns,
            exclude: &[],
            dns_zones: &[],
        };
        let t = &trusted.servers[0];
        assert!(
            proving.dns_refused(t).is_empty(),
            "{:?}",
            proving.dns_refused(t)
        );
        assert_eq!(proving.method_in("cust.example.test", t), Method::Dns);
        let x = &tenant.servers[0];
        let refused = proving.dns_refused(x);
        assert_eq!(refused.len(), 3, "{refused:?}");
        assert!(refused[0].1.contains("writable by everyone"), "{refused:?}");
        assert_eq!(proving.method_in("cust.example.test", x), Method::Webroot);
        assert_eq!(proving.block_names(x), vec!["cust.example.test"]);
        let p = plans(&tenant, &[], 80, &proving).unwrap();
        assert_eq!(p[0].names, vec!["cust.example.test"]);
        let left: Vec<&str> = p[0].left_out.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(left, vec!["*.cust.example.test", "*.acme-delegate.test"]);
        // The tenant's own wildcard, listed by the operator: allowed; the other zone's not.
        let listed = BTreeMap::from([("*.cust.example.test".to_owned(), Challenge::Dns01)]);
        proving.per_name = &listed;
        assert_eq!(
            proving.block_names(x),
            vec!["cust.example.test", "*.cust.example.test"]
        );
        // With an allow-list, the zone decides, whoever wrote the file.
        let zones = ["example.test".to_owned()];
        proving.per_name = &all_dns;
        proving.dns_zones = &zones;
        let refused = proving.dns_refused(x);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0].0, "*.acme-delegate.test");
        assert!(refused[0].1.contains("outside the zones"), "{refused:?}");
        assert!(proving
            .dns_refused(t)
            .iter()
            .all(|(n, _)| n == "*.acme-delegate.test"));
    }
}
