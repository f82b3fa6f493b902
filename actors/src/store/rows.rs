//! Stored records read back from rows, written once for both backends: a SQLite row and a
//! PostgreSQL row answer the same typed questions ([`Columns`]), and each record kind has one
//! decoder here. Column positions are those of the SELECTs in each backend's `load_all`
//! (the same lists in the same order).

use super::{decode_routes, relation_from, watcher_from, StoredNotifierDialog};
use pua_xmpp::notifier::WatcherRelation;
use pua_xmpp::publisher::PublicationRecord;
use pua_xmpp::subscriber::{Dialog, Pair, SubscriptionRecord};
use xmpp_parsers::jid::BareJid;

/// What the decoders ask of a row. Integers come as `i64` whatever the column's width (SQLite
/// has one integer type; PostgreSQL's columns are SMALLINT, INTEGER or BIGINT). Errors name
/// the column.
pub(crate) trait Columns {
    fn opt_text(&self, idx: usize, name: &str) -> Result<Option<String>, String>;
    fn opt_int(&self, idx: usize, name: &str) -> Result<Option<i64>, String>;
    fn flag(&self, idx: usize, name: &str) -> Result<bool, String>;

    fn text(&self, idx: usize, name: &str) -> Result<String, String> {
        self.opt_text(idx, name)?
            .ok_or_else(|| format!("column {name}: NULL"))
    }

    fn int(&self, idx: usize, name: &str) -> Result<i64, String> {
        self.opt_int(idx, name)?
            .ok_or_else(|| format!("column {name}: NULL"))
    }

    fn opt_u32(&self, idx: usize, name: &str) -> Result<Option<u32>, String> {
        self.opt_int(idx, name)?
            .map(|v| u32::try_from(v).map_err(|_| format!("column {name}: {v} is out of range")))
            .transpose()
    }

    fn u32(&self, idx: usize, name: &str) -> Result<u32, String> {
        self.opt_u32(idx, name)?
            .ok_or_else(|| format!("column {name}: NULL"))
    }

    fn jid(&self, idx: usize, name: &str) -> Result<BareJid, String> {
        let text = self.text(idx, name)?;
        BareJid::new(&text).map_err(|e| format!("{name} {text:?} is not a bare JID: {e}"))
    }
}

impl Columns for rusqlite::Row<'_> {
    fn opt_text(&self, idx: usize, name: &str) -> Result<Option<String>, String> {
        self.get(idx).map_err(|e| format!("column {name}: {e}"))
    }
    fn opt_int(&self, idx: usize, name: &str) -> Result<Option<i64>, String> {
        self.get(idx).map_err(|e| format!("column {name}: {e}"))
    }
    fn flag(&self, idx: usize, name: &str) -> Result<bool, String> {
        self.get(idx).map_err(|e| format!("column {name}: {e}"))
    }
}

impl Columns for tokio_postgres::Row {
    fn opt_text(&self, idx: usize, name: &str) -> Result<Option<String>, String> {
        self.try_get(idx).map_err(|e| format!("column {name}: {e}"))
    }
    fn opt_int(&self, idx: usize, name: &str) -> Result<Option<i64>, String> {
        use tokio_postgres::types::Type;
        let ty = self
            .columns()
            .get(idx)
            .map(|c| c.type_().clone())
            .ok_or_else(|| format!("column {name}: no column {idx}"))?;
        let err = |e: tokio_postgres::Error| format!("column {name}: {e}");
        match ty {
            Type::INT2 => Ok(self
                .try_get::<_, Option<i16>>(idx)
                .map_err(err)?
                .map(i64::from)),
            Type::INT4 => Ok(self
                .try_get::<_, Option<i32>>(idx)
                .map_err(err)?
                .map(i64::from)),
            _ => self.try_get(idx).map_err(err),
        }
    }
    fn flag(&self, idx: usize, name: &str) -> Result<bool, String> {
        self.try_get(idx).map_err(|e| format!("column {name}: {e}"))
    }
}

/// `watcher, presentity, watcher_uri, presentity_uri, relation, lease_left, expires_at,
/// call_id, local_tag, remote_tag, local_cseq, remote_cseq, remote_target, route_set,
/// requested` of `subscription`.
pub(crate) fn subscription(r: &impl Columns) -> Result<(SubscriptionRecord, Option<i64>), String> {
    let dialog = match r.opt_text(7, "call_id")? {
        None => None,
        Some(call_id) => Some(Dialog {
            call_id,
            local_tag: r.opt_text(8, "local_tag")?.unwrap_or_default(),
            remote_tag: r.opt_text(9, "remote_tag")?,
            local_cseq: r.opt_u32(10, "local_cseq")?.unwrap_or(0),
            remote_cseq: r.opt_u32(11, "remote_cseq")?,
            remote_target: r.opt_text(12, "remote_target")?,
            route_set: decode_routes(r.opt_text(13, "route_set")?)?,
            requested: r.opt_u32(14, "requested")?.unwrap_or(0),
        }),
    };
    Ok((
        SubscriptionRecord {
            pair: Pair {
                watcher: r.jid(0, "watcher")?,
                presentity: r.jid(1, "presentity")?,
                watcher_uri: r.text(2, "watcher_uri")?,
                presentity_uri: r.text(3, "presentity_uri")?,
            },
            relation: relation_from(r.int(4, "relation")?)?,
            dialog,
            lease_left: r.opt_u32(5, "lease_left")?,
        },
        r.opt_int(6, "expires_at")?,
    ))
}

/// `presentity, watcher, state` of `watcher_relation`.
pub(crate) fn relation(r: &impl Columns) -> Result<(BareJid, BareJid, WatcherRelation), String> {
    Ok((
        r.jid(0, "presentity")?,
        r.jid(1, "watcher")?,
        watcher_from(r.int(2, "state")?)?,
    ))
}

/// `call_id, presentity, local_tag, remote_tag, remote_uri, remote_display, watcher,
/// remote_target, route_set, local_cseq, remote_cseq, event_id, active, expires_at` of
/// `notifier_dialog`.
pub(crate) fn dialog(r: &impl Columns) -> Result<(BareJid, StoredNotifierDialog), String> {
    Ok((
        r.jid(1, "presentity")?,
        StoredNotifierDialog {
            call_id: r.text(0, "call_id")?,
            local_tag: r.text(2, "local_tag")?,
            remote_tag: r.text(3, "remote_tag")?,
            remote_uri: r.text(4, "remote_uri")?,
            remote_display: r.opt_text(5, "remote_display")?,
            watcher: r.jid(6, "watcher")?,
            remote_target: r.text(7, "remote_target")?,
            route_set: decode_routes(r.opt_text(8, "route_set")?)?,
            local_cseq: r.u32(9, "local_cseq")?,
            remote_cseq: r.u32(10, "remote_cseq")?,
            event_id: r.opt_text(11, "event_id")?,
            active: r.flag(12, "active")?,
            expires_at_unix: r.int(13, "expires_at")?,
        },
    ))
}

/// `presentity, uri, etag, call_id, cseq, body, available, lease_left, expires_at` of
/// `publication`.
pub(crate) fn publication(
    r: &impl Columns,
) -> Result<(BareJid, PublicationRecord, Option<i64>), String> {
    Ok((
        r.jid(0, "presentity")?,
        PublicationRecord {
            uri: r.text(1, "uri")?,
            etag: r.opt_text(2, "etag")?,
            call_id: r.text(3, "call_id")?,
            cseq: r.u32(4, "cseq")?,
            body: r.opt_text(5, "body")?,
            available: r.flag(6, "available")?,
            lease_left: r.opt_u32(7, "lease_left")?,
        },
        r.opt_int(8, "expires_at")?,
    ))
}

/// `presentity` of `winfo`.
pub(crate) fn winfo(r: &impl Columns) -> Result<BareJid, String> {
    r.jid(0, "presentity")
}
