//! The token journal: every challenge token path is recorded before it is written, so a run
//! killed mid-order leaves nothing the next run does not remove.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{Error, Store};

impl Store {
    fn intent_path(&self) -> PathBuf {
        self.root.join("install.intent")
    }

    /// Records what an install is about to change, before it changes anything (the lifecycle's
    /// type; written atomically).
    pub fn write_intent<T: serde::Serialize>(&self, intent: &T) -> Result<(), Error> {
        let path = self.intent_path();
        let json = serde_json::to_vec_pretty(intent).map_err(|source| Error::Corrupt {
            path: path.clone(),
            source,
        })?;
        crate::fsutil::write_atomic(&path, &json, crate::fsutil::PRIVATE_MODE)
            .map_err(Error::io("write", &path))
    }

    /// The intent an install left behind (it was killed before finishing), if any.
    pub fn read_intent<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>, Error> {
        let path = self.intent_path();
        match crate::fsutil::read_limited(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|source| Error::Corrupt { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", &path)(e)),
        }
    }

    /// Removes the intent: the install it describes is finished (or rolled back).
    pub fn clear_intent(&self) -> Result<(), Error> {
        let path = self.intent_path();
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", &path)(e)),
        }
    }

    fn journal_path(&self) -> PathBuf {
        self.root.join("tokens.journal")
    }

    /// Records a token path before it is written.
    pub fn journal_token(&self, path: &Path) -> Result<(), Error> {
        self.journal_token_in(&self.journal_path(), path)
    }

    /// The fleet agent's own token journal (apart from the runs' one: a run's start must not
    /// take the answers the agent serves for another node's order).
    pub fn agent_journal(&self) -> PathBuf {
        self.root.join("agent-tokens.journal")
    }

    /// Records a token path in the journal `journal` before it is written.
    pub fn journal_token_in(&self, journal: &Path, path: &Path) -> Result<(), Error> {
        let journal = journal.to_path_buf();
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&journal)
            .map_err(Error::io("open", &journal))?;
        writeln!(f, "{}", path.display())
            .and_then(|()| f.sync_data())
            .map_err(Error::io("write", &journal))
    }

    /// Takes the token paths an earlier run recorded (it may have been killed before clearing
    /// them) and empties the journal. Removing the files is the caller's: through a safely opened
    /// directory, never by path.
    pub fn take_journal(&self) -> Result<Vec<PathBuf>, Error> {
        self.take_journal_in(&self.journal_path())
    }

    /// Like [`Store::take_journal`], for the journal `journal`.
    pub fn take_journal_in(&self, journal: &Path) -> Result<Vec<PathBuf>, Error> {
        let journal = journal.to_path_buf();
        let text = match fs::read_to_string(&journal) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("read", &journal)(e)),
        };
        fs::remove_file(&journal).map_err(Error::io("remove", &journal))?;
        Ok(text
            .lines()
            .filter(|l| !l.is_empty())
            .map(PathBuf::from)
            .collect())
    }
}

/// The DNS journal is read and rewritten by the solvers of concurrent orders of one run.
static DNS_JOURNAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Store {
    fn dns_journal_path(&self) -> PathBuf {
        self.root.join("dns.journal")
    }

    fn dns_journal_lines(&self) -> Result<Vec<String>, Error> {
        let path = self.dns_journal_path();
        match fs::read_to_string(&path) {
            Ok(t) => Ok(t
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(Error::io("read", &path)(e)),
        }
    }

    fn write_dns_journal(&self, lines: &[String]) -> Result<(), Error> {
        let path = self.dns_journal_path();
        if lines.is_empty() {
            return match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io("remove", &path)(e)),
                _ => Ok(()),
            };
        }
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        crate::fsutil::write_atomic(&path, text.as_bytes(), crate::fsutil::PRIVATE_MODE)
            .map_err(Error::io("write", &path))
    }

    fn dns_line<T: serde::Serialize>(&self, record: &T) -> Result<String, Error> {
        serde_json::to_string(record).map_err(|source| Error::Corrupt {
            path: self.dns_journal_path(),
            source,
        })
    }

    /// Records a DNS record (the solver's type) before it is made.
    pub fn journal_dns<T: serde::Serialize>(&self, record: &T) -> Result<(), Error> {
        let line = self.dns_line(record)?;
        let _guard = DNS_JOURNAL
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut lines = self.dns_journal_lines()?;
        if !lines.contains(&line) {
            lines.push(line);
        }
        self.write_dns_journal(&lines)
    }

    /// Forgets a DNS record that was removed.
    pub fn unjournal_dns<T: serde::Serialize>(&self, record: &T) -> Result<(), Error> {
        let line = self.dns_line(record)?;
        let _guard = DNS_JOURNAL
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut lines = self.dns_journal_lines()?;
        lines.retain(|l| *l != line);
        self.write_dns_journal(&lines)
    }

    /// The DNS records an earlier run made and did not remove (it was killed, or the removal
    /// failed). They stay journaled until [`Store::unjournal_dns`] forgets each. A line that
    /// does not parse is reported and dropped.
    pub fn dns_journal<T: serde::de::DeserializeOwned>(&self) -> Result<Vec<T>, Error> {
        let _guard = DNS_JOURNAL
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = Vec::new();
        let mut kept = Vec::new();
        for line in self.dns_journal_lines()? {
            match serde_json::from_str(&line) {
                Ok(r) => {
                    out.push(r);
                    kept.push(line);
                }
                Err(e) => tracing::warn!(
                    "{}: dropping a line that is not a DNS record ({e})",
                    self.dns_journal_path().display()
                ),
            }
        }
        self.write_dns_journal(&kept)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_is_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state")).unwrap();
        let a = dir.path().join("tok_en-1");
        let b = dir.path().join("tok_en-2");
        store.journal_token(&a).unwrap();
        store.journal_token(&b).unwrap();
        assert_eq!(store.take_journal().unwrap(), vec![a, b]);
        assert!(store.take_journal().unwrap().is_empty());
    }

    #[test]
    fn dns_records_stay_journaled_until_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state")).unwrap();
        let (a, b) = (vec!["a".to_owned()], vec!["b".to_owned()]);
        store.journal_dns(&a).unwrap();
        store.journal_dns(&b).unwrap();
        store.journal_dns(&a).unwrap();
        assert_eq!(
            store.dns_journal::<Vec<String>>().unwrap(),
            vec![a.clone(), b.clone()]
        );
        store.unjournal_dns(&a).unwrap();
        assert_eq!(store.dns_journal::<Vec<String>>().unwrap(), vec![b.clone()]);
        store.unjournal_dns(&b).unwrap();
        assert!(store.dns_journal::<Vec<String>>().unwrap().is_empty());
        assert!(!dir.path().join("state/dns.journal").exists());
    }
}
