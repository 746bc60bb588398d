//! Search by client, firm-side account, date range and text (SQLite FTS5), every search
//! recorded in the chain with who did it.

use rusqlite::types::Value;
use serde::{Deserialize, Serialize};

use crate::error::ArchiveError;
use crate::limits::*;
use crate::record::*;
use crate::store::{check_actor, check_len, read_record, to_i64, Archive};

/// With [`SearchOrder::Relevance`], bm25 ranks the newest this many text matches (a
/// bound on the work one search does; filters apply before it).
pub const MAX_RANK_CANDIDATES: u32 = 20_000;

/// Characters of text returned in a [`SearchHit`] (use [`Archive::content`] for all).
pub const MAX_SNIPPET_CHARS: usize = 280;

/// One search result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchHit {
    /// The record's sequence number.
    pub seq: u64,
    /// When the archive recorded it.
    pub recorded_ms: u64,
    /// The record's hash.
    #[serde(with = "crate::record::hex32")]
    pub hash: Hash,
    /// Its chained metadata.
    pub meta: MessageMeta,
    /// The first [`MAX_SNIPPET_CHARS`] characters of its text; `None` when the content
    /// was deleted at the end of retention.
    pub snippet: Option<String>,
    /// bm25 score (lower is better) with [`SearchOrder::Relevance`] and a text.
    pub score: Option<f64>,
}

/// The result of a search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchResults {
    /// Matches, in the requested order, at most the limit.
    pub hits: Vec<SearchHit>,
    /// The `search` audit record that records this search.
    pub audit_seq: u64,
}

/// Turns user text into an FTS5 query: every whitespace-separated word becomes a quoted
/// string (so no FTS5 syntax is interpreted), all required; a trailing `*` makes a word
/// a prefix.
pub(crate) fn fts_query(text: &str) -> Result<String, ArchiveError> {
    check_len("search text length", text, MAX_QUERY_TEXT_LEN)?;
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.len() > MAX_QUERY_TERMS {
        return Err(ArchiveError::TooLarge {
            what: "search terms",
            got: words.len() as u64,
            max: MAX_QUERY_TERMS as u64,
        });
    }
    let mut q = String::with_capacity(text.len() + 8 * words.len());
    for w in words {
        let (w, prefix) = match w.strip_suffix('*') {
            Some(stem) if !stem.is_empty() => (stem, true),
            _ => (w, false),
        };
        if !q.is_empty() {
            q.push(' ');
        }
        q.push('"');
        q.push_str(&w.replace('"', "\"\""));
        q.push('"');
        if prefix {
            q.push('*');
        }
    }
    if q.is_empty() {
        return Err(ArchiveError::Invalid {
            what: "search text",
            reason: "no words".into(),
        });
    }
    Ok(q)
}

impl Archive {
    /// Searches message records; every filter given must match. Before the results are
    /// returned, a `search` record naming `actor`, the query and the number of results
    /// is appended to the chain (durably); if that fails, no results are returned.
    pub fn search(
        &mut self,
        actor: &str,
        query: &SearchQuery,
    ) -> Result<SearchResults, ArchiveError> {
        check_actor(actor)?;
        if query.limit > MAX_SEARCH_RESULTS {
            return Err(ArchiveError::TooLarge {
                what: "search limit",
                got: u64::from(query.limit),
                max: u64::from(MAX_SEARCH_RESULTS),
            });
        }
        let limit = if query.limit == 0 {
            MAX_SEARCH_RESULTS
        } else {
            query.limit
        };
        if let Some(c) = &query.client {
            check_len("client account length", c, MAX_ACCOUNT_LEN)?;
        }
        if let Some(f) = &query.firm {
            check_len("firm account length", f, MAX_ACCOUNT_LEN)?;
        }
        if let (Some(a), Some(b)) = (query.from_ms, query.to_ms) {
            if a >= b {
                return Err(ArchiveError::Invalid {
                    what: "search date range",
                    reason: format!("from {a} is not before to {b}"),
                });
            }
        }
        let fts = query.text.as_deref().map(fts_query).transpose()?;

        let mut sql = String::new();
        let mut args: Vec<Value> = Vec::new();
        let with_score = fts.is_some() && query.order == SearchOrder::Relevance;
        let has_text = fts.is_some();
        if let Some(q) = fts {
            sql.push_str(if with_score {
                "SELECT m.seq, bm25(message_fts) AS score FROM message_fts \
                 JOIN messages m ON m.seq = message_fts.rowid WHERE message_fts MATCH ?"
            } else {
                "SELECT m.seq, NULL FROM message_fts \
                 JOIN messages m ON m.seq = message_fts.rowid WHERE message_fts MATCH ?"
            });
            args.push(Value::Text(q));
        } else {
            sql.push_str("SELECT m.seq, NULL FROM messages m WHERE 1");
        }
        if let Some(c) = &query.client {
            sql.push_str(" AND m.client = ?");
            args.push(Value::Text(c.clone()));
        }
        if let Some(f) = &query.firm {
            sql.push_str(" AND m.firm = ?");
            args.push(Value::Text(f.clone()));
        }
        if let Some(a) = query.from_ms {
            sql.push_str(" AND m.sent_ms >= ?");
            args.push(Value::Integer(to_i64(a, "from_ms")?));
        }
        if let Some(b) = query.to_ms {
            sql.push_str(" AND m.sent_ms < ?");
            args.push(Value::Integer(to_i64(b, "to_ms")?));
        }
        // With a text, order by the FTS table's own rowid (= seq) so FTS5 walks its
        // index in order and stops at the limit instead of sorting every match.
        // With a client or firm filter, their index drives and FTS5 is probed per row.
        let key = if has_text && query.client.is_none() && query.firm.is_none() {
            "message_fts.rowid"
        } else {
            "m.seq"
        };
        if with_score {
            // bm25 among the newest MAX_RANK_CANDIDATES matches: ranking every match of
            // a word that occurs in half the archive would cost seconds.
            sql.push_str(&format!(" ORDER BY {key} DESC LIMIT ?"));
            args.push(Value::Integer(i64::from(MAX_RANK_CANDIDATES)));
            sql = format!("SELECT seq, score FROM ({sql}) ORDER BY score LIMIT ?");
        } else if query.order == SearchOrder::Oldest {
            sql.push_str(&format!(" ORDER BY {key} ASC LIMIT ?"));
        } else {
            sql.push_str(&format!(" ORDER BY {key} DESC LIMIT ?"));
        }
        args.push(Value::Integer(i64::from(limit)));

        let found: Vec<(i64, Option<f64>)> = {
            let mut stmt = self.conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        let mut hits = Vec::with_capacity(found.len());
        for (seq, score) in found {
            let seq = u64::try_from(seq).unwrap_or(0);
            let Some(rec) = read_record(&self.conn, seq)? else {
                continue;
            };
            let RecordBody::Message(meta) = rec.body else {
                return Err(ArchiveError::Corrupt {
                    seq,
                    reason: "indexed as a message but is not one".into(),
                });
            };
            let snippet: Option<String> = {
                use rusqlite::OptionalExtension;
                self.conn
                    .prepare_cached("SELECT substr(text, 1, ?2) FROM content WHERE seq = ?1")?
                    .query_row(
                        rusqlite::params![to_i64(seq, "seq")?, MAX_SNIPPET_CHARS as i64],
                        |r| r.get(0),
                    )
                    .optional()?
            };
            hits.push(SearchHit {
                seq,
                recorded_ms: rec.recorded_ms,
                hash: rec.hash,
                meta,
                snippet,
                score,
            });
        }
        let (audit_seq, _) = self.append(&RecordBody::Search {
            actor: actor.to_string(),
            query: query.clone(),
            results: hits.len() as u64,
        })?;
        Ok(SearchResults { hits, audit_seq })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fts_query_quotes_everything() -> Result<(), ArchiveError> {
        assert_eq!(fts_query("wire transfer")?, "\"wire\" \"transfer\"");
        assert_eq!(fts_query("addr*")?, "\"addr\"*");
        assert_eq!(fts_query("a\"b OR NEAR(")?, "\"a\"\"b\" \"OR\" \"NEAR(\"");
        assert!(matches!(
            fts_query("   "),
            Err(ArchiveError::Invalid { .. })
        ));
        assert!(matches!(
            fts_query(&"x ".repeat(MAX_QUERY_TERMS + 1)),
            Err(ArchiveError::TooLarge { .. })
        ));
        Ok(())
    }
}
