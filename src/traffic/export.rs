//! A replay's requests as JSON lines (`distill-sim traffic export`), for detectors outside the
//! simulator. One line per request the API decided, in time order, schema version
//! [`EXPORT_VERSION`]:
//!
//! `{"v":1,"minute":M,"account":A,"payment":P,"ip_asn":I,"fingerprint":F,"region":R,
//! "verified":B,"kind":"sort.hard","reasoning":B,"voice":B,"template":T,
//! "input_tokens":N,"output_tokens":N,"code":"ok","attacker":B}`
//!
//! `minute` is simulated minutes from the replay's start; `account` the API's account index;
//! the identity fields are the account's (what identity clustering sees); `kind` the prompt's
//! kind as the metrics name it (`sort.hard`, `harmful`, `lookalike`, `affect.voice`, ...);
//! `template` its template's index in its bank (the campaign's bank has bit 31 set), the
//! stand-in for its text; `code` the API's answer (`ok`, `throttled`, `refused`,
//! `region_blocked`, `challenged`, `fallback`); `attacker` the ground truth, whether the query
//! is the campaign's (a proxy reseller's customers' queries on a campaign account are not),
//! for scoring a detector on the log (a detector must not read it).

use crate::api::{Code, Identity};
use crate::traffic::Query;
use std::io::Write;

/// Version of the line format (`v` in every line).
pub const EXPORT_VERSION: u32 = 1;

/// Writes a replay's requests.
pub struct Exporter {
    out: Box<dyn Write>,
    kinds: Vec<String>,
    pub lines: u64,
    error: Option<std::io::Error>,
}

impl Exporter {
    pub fn new(out: Box<dyn Write>) -> Exporter {
        Exporter {
            out,
            kinds: crate::world::mix::suite_kinds()
                .iter()
                .map(|k| k.name())
                .collect(),
            lines: 0,
            error: None,
        }
    }

    /// One decided request (the first write error is kept and reported by [`finish`]).
    ///
    /// [`finish`]: Exporter::finish
    #[inline]
    pub fn write(&mut self, q: &Query, id: &Identity, code: Code, attacker: bool) {
        if self.error.is_some() {
            return;
        }
        let kind = self
            .kinds
            .get(q.kind as usize)
            .map_or("unknown", String::as_str);
        let r = writeln!(
            self.out,
            "{{\"v\":{EXPORT_VERSION},\"minute\":{},\"account\":{},\"payment\":{},\"ip_asn\":{},\"fingerprint\":{},\"region\":{},\"verified\":{},\"kind\":\"{kind}\",\"reasoning\":{},\"voice\":{},\"template\":{},\"input_tokens\":{},\"output_tokens\":{},\"code\":\"{}\",\"attacker\":{attacker}}}",
            q.minute,
            q.account,
            id.payment,
            id.ip_asn,
            id.fingerprint,
            id.region,
            id.verified,
            q.reasoning,
            q.voice,
            q.template,
            q.input_tokens,
            q.output_tokens,
            code.name(),
        );
        match r {
            Ok(()) => self.lines += 1,
            Err(e) => self.error = Some(e),
        }
    }

    /// Flush; the first write error if there was one.
    pub fn finish(mut self) -> std::io::Result<u64> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.out.flush()?;
        Ok(self.lines)
    }
}

/// Replay the traffic of `tr` (on `api`, with the campaign of `att`, whose `world_harm` the
/// caller sets) with run seed `seed` and write every decided request to `path` (through a
/// temporary file renamed at the end: an interrupted export leaves no half-written log).
/// Returns the lines written and the replay's wall seconds.
pub fn export_run(
    api: &crate::api::ApiConfig,
    tr: &crate::traffic::TrafficConfig,
    att: &crate::attacker::AttackerConfig,
    seed: u64,
    path: &std::path::Path,
) -> crate::Result<(u64, f64)> {
    use crate::traffic::replay::{calibrate, Replay};
    if !tr.enabled {
        return Err(crate::Error::Invalid(
            "traffic.enabled is false: this experiment replays no traffic to export (set \
             traffic.enabled: true)"
                .into(),
        ));
    }
    let tmp = path.with_extension("partial");
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
    }
    let file = std::fs::File::create(&tmp).map_err(|e| crate::Error::io(&tmp, e))?;
    let out = Box::new(std::io::BufWriter::with_capacity(1 << 20, file));
    let mut replay = Replay::new(api, tr, att, seed, None)?;
    if tr.tiers.is_some() {
        replay = replay.with_calibration(calibrate(api, tr, att, seed)?);
    }
    let o = replay.with_export(Exporter::new(out)).run()?;
    let lines = o
        .exported
        .unwrap_or(Ok(0))
        .map_err(|e| crate::Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| crate::Error::io(path, e))?;
    Ok((lines, o.stats.wall_seconds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ApiConfig;
    use crate::attacker::AttackerConfig;
    use crate::traffic::replay::Replay;
    use crate::traffic::TrafficConfig;

    /// Every decided request is one line of the documented fields, in time order; the lines
    /// count the replay's queries, and the attacker's lines and answered codes match its
    /// totals.
    #[test]
    fn an_export_has_one_line_per_decided_request() {
        let mut tr = TrafficConfig::default();
        tr.population.users = 200;
        let att = AttackerConfig {
            accounts: 10,
            max_days: 1.0,
            ..Default::default()
        };
        let path = std::env::temp_dir().join(format!("ds-export-{}.jsonl", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        let o = Replay::new(&ApiConfig::default(), &tr, &att, 3, None)
            .unwrap()
            .with_export(Exporter::new(Box::new(std::io::BufWriter::new(file))))
            .run()
            .unwrap();
        let lines = o.exported.unwrap().unwrap();
        assert_eq!(lines, o.stats.queries);
        let text = std::fs::read_to_string(&path).unwrap();
        let rows: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows.len() as u64, lines);
        let keys = [
            "v",
            "minute",
            "account",
            "payment",
            "ip_asn",
            "fingerprint",
            "region",
            "verified",
            "kind",
            "reasoning",
            "voice",
            "template",
            "input_tokens",
            "output_tokens",
            "code",
            "attacker",
        ];
        for r in &rows {
            let o = r.as_object().unwrap();
            assert_eq!(o.len(), keys.len());
            assert!(keys.iter().all(|k| o.contains_key(*k)), "{r}");
            assert_eq!(r["v"], EXPORT_VERSION);
        }
        assert!(rows
            .windows(2)
            .all(|w| w[0]["minute"].as_u64() <= w[1]["minute"].as_u64()));
        let attacker = rows.iter().filter(|r| r["attacker"] == true).count() as u64;
        let served = rows
            .iter()
            .filter(|r| r["attacker"] == true && r["code"] == "ok")
            .count() as u64;
        assert!(attacker > 0 && attacker < lines);
        assert_eq!(served, o.stats.attacker_served);
        let benign_ok = rows
            .iter()
            .filter(|r| r["attacker"] == false && r["code"] == "ok")
            .count() as u64;
        assert_eq!(benign_ok, o.stats.benign_served);
        let _ = std::fs::remove_file(&path);
    }
}
