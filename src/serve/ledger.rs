//! The server's durable ledger: one JSON line per request the API decided (answered,
//! throttled or refused), written by the batcher thread and committed (flushed and synced)
//! once per batch, before any of the batch's responses is sent. A server restarted on the same
//! file replays it into the accounts: spend, usage, throttle counts and the token buckets'
//! levels come back; a torn last line (a kill mid-write) is cut off.

use crate::api::{Accounts, Code};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Seek, Write};
use std::path::{Path, PathBuf};

/// Version of the line format (`v` in every line).
pub const LEDGER_VERSION: u32 = 1;

/// One decided request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub v: u32,
    /// Simulated seconds since the ledger began.
    pub t: f64,
    /// Index of the account in the keys file.
    pub account: u32,
    /// The key's last 6 characters, to check that a restart uses the same keys file.
    pub key_tail: String,
    pub request_id: String,
    /// The client's `x-stainless-retry-count` (the `openai` package's retry counter), if sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_count: Option<u32>,
    pub code: Code,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub hidden_reasoning_tokens: u64,
    pub spend_usd: f64,
    /// The prompt's kind (index into the eval suites' kinds) and whether it elicits a
    /// reasoning trace: what the live detectors count, replayed into them on a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<bool>,
}

/// An action the live detectors took on an account (restored on a restart).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionEntry {
    pub v: u32,
    pub t: f64,
    pub account: u32,
    pub key_tail: String,
    pub action: crate::traffic::Action,
}

/// A ledger line: a decided request or an action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Line {
    Request(Entry),
    Action(ActionEntry),
}

impl Line {
    fn v(&self) -> u32 {
        match self {
            Line::Request(e) => e.v,
            Line::Action(e) => e.v,
        }
    }
}

/// The last 6 characters of a key.
pub fn key_tail(key: &str) -> String {
    key.chars()
        .rev()
        .take(6)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect()
}

pub struct LedgerFile {
    path: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    pub entries: u64,
}

impl LedgerFile {
    /// Open (or create) the ledger at `path` and read what it holds. A last line without its
    /// newline, or that does not parse, is a torn write: it is cut off the file (and said on
    /// stderr). Any other line that does not parse is an error naming the line.
    pub fn open(path: &Path) -> Result<(LedgerFile, Vec<Line>)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        let mut entries = Vec::new();
        let mut good_end = 0u64;
        {
            let mut r = std::io::BufReader::new(&file);
            let mut line = String::new();
            let mut n = 0usize;
            loop {
                line.clear();
                let read = r.read_line(&mut line).map_err(|e| Error::io(path, e))?;
                if read == 0 {
                    break;
                }
                n += 1;
                let complete = line.ends_with('\n');
                match serde_json::from_str::<Line>(line.trim_end()) {
                    Ok(e) if complete => {
                        if e.v() != LEDGER_VERSION {
                            return Err(Error::Invalid(format!(
                                "{}:{n}: ledger version {} (this build writes {LEDGER_VERSION})",
                                path.display(),
                                e.v()
                            )));
                        }
                        entries.push(e);
                        good_end += read as u64;
                    }
                    Ok(_) | Err(_) => {
                        // Torn only if nothing follows.
                        let mut rest = String::new();
                        r.read_line(&mut rest).map_err(|e| Error::io(path, e))?;
                        if !rest.is_empty() {
                            return Err(Error::Invalid(format!(
                                "{}:{n}: not a ledger line: {}",
                                path.display(),
                                line.trim_end().chars().take(80).collect::<String>()
                            )));
                        }
                        eprintln!(
                            "[serve] {}:{n}: torn last line ({} bytes) cut off",
                            path.display(),
                            read
                        );
                        break;
                    }
                }
            }
        }
        file.set_len(good_end).map_err(|e| Error::io(path, e))?;
        file.seek(std::io::SeekFrom::End(0))
            .map_err(|e| Error::io(path, e))?;
        let count = entries.len() as u64;
        Ok((
            LedgerFile {
                path: path.to_path_buf(),
                out: std::io::BufWriter::new(file),
                entries: count,
            },
            entries,
        ))
    }

    pub fn append(&mut self, e: &Entry) -> Result<()> {
        self.append_line(e)
    }

    pub fn append_action(&mut self, e: &ActionEntry) -> Result<()> {
        self.append_line(e)
    }

    fn append_line(&mut self, e: &impl Serialize) -> Result<()> {
        let mut line = serde_json::to_string(e).map_err(|e| Error::Invalid(e.to_string()))?;
        line.push('\n');
        self.out
            .write_all(line.as_bytes())
            .map_err(|err| Error::io(&self.path, err))?;
        self.entries += 1;
        Ok(())
    }

    /// Make every appended line durable (flush, then fsync of the data).
    pub fn commit(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| Error::io(&self.path, e))?;
        self.out
            .get_ref()
            .sync_data()
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// Replay ledger entries into freshly opened accounts (in keys-file order, whose keys end in
/// `tails`): usage, spend and throttle counts into the ledgers, admitted requests' tokens out
/// of the buckets at their times. Returns the last entry's simulated time.
pub fn replay(accounts: &mut Accounts, tails: &[String], entries: &[Entry]) -> Result<f64> {
    let mut last = 0.0f64;
    for (i, e) in entries.iter().enumerate() {
        let a = e.account as usize;
        if tails.get(a) != Some(&e.key_tail) {
            return Err(Error::Invalid(format!(
                "ledger line {}: account {a} was the key ending `{}`, the keys file has {}: \
                 restart with the keys file the ledger was written with",
                i + 1,
                e.key_tail,
                tails
                    .get(a)
                    .map_or("no such account".to_string(), |t| format!("`{t}`"))
            )));
        }
        last = last.max(e.t);
        let l = &mut accounts.ledger[a];
        match e.code {
            Code::Throttled => l.throttled += 1,
            c if c.answered() => {
                let b = &mut accounts.buckets[a];
                b[0].refill(e.t);
                b[0].take(1.0);
                b[1].refill(e.t);
                b[1].take(e.input_tokens as f64);
                b[2].refill(e.t);
                b[2].take((e.output_tokens + e.hidden_reasoning_tokens) as f64);
                l.requests += 1;
                l.input_tokens += e.input_tokens;
                l.output_tokens += e.output_tokens;
                l.hidden_reasoning_tokens += e.hidden_reasoning_tokens;
                l.spend_usd += e.spend_usd;
            }
            _ => {}
        }
    }
    Ok(last)
}
