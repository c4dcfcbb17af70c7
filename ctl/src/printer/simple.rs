//! The `simple` format: keys and values on their own lines, `OK` for a put,
//! the deleted count for a delete, comma-joined rows for cluster commands.

use std::io::{self, Write};

use etcd_client::proto::{
    PbDeleteResponse, PbKeyValue, PbPutResponse, PbRangeResponse, PbTxnOpResponse, PbTxnResponse,
};

use super::{EpHealth, Printer};
use crate::gofmt::hex_escaped;

fn kv(p: &Printer, w: &mut dyn Write, kv: &PbKeyValue) -> io::Result<()> {
    let (key, value) = if p.hex {
        (hex_escaped(&kv.key), hex_escaped(&kv.value))
    } else {
        (kv.key.clone(), kv.value.clone())
    };
    if !p.value_only {
        w.write_all(&key)?;
        w.write_all(b"\n")?;
    }
    w.write_all(&value)?;
    w.write_all(b"\n")
}

pub fn put(p: &Printer, w: &mut dyn Write, r: &PbPutResponse) -> io::Result<()> {
    writeln!(w, "OK")?;
    if let Some(prev) = &r.prev_kv {
        kv(p, w, prev)?;
    }
    Ok(())
}

pub fn get(p: &Printer, w: &mut dyn Write, r: &PbRangeResponse) -> io::Result<()> {
    for item in &r.kvs {
        kv(p, w, item)?;
    }
    Ok(())
}

pub fn del(p: &Printer, w: &mut dyn Write, r: &PbDeleteResponse) -> io::Result<()> {
    writeln!(w, "{}", r.deleted)?;
    for prev in &r.prev_kvs {
        kv(p, w, prev)?;
    }
    Ok(())
}

pub fn txn(p: &Printer, w: &mut dyn Write, r: &PbTxnResponse) -> io::Result<()> {
    writeln!(w, "{}", if r.succeeded { "SUCCESS" } else { "FAILURE" })?;
    for op in &r.responses {
        writeln!(w)?;
        match &op.response {
            Some(PbTxnOpResponse::ResponsePut(r)) => put(p, w, r)?,
            Some(PbTxnOpResponse::ResponseRange(r)) => get(p, w, r)?,
            Some(PbTxnOpResponse::ResponseDeleteRange(r)) => del(p, w, r)?,
            other => writeln!(w, "unexpected response {other:?}")?,
        }
    }
    Ok(())
}

/// A table's rows, one line each, cells joined by ", ".
pub fn rows(w: &mut dyn Write, rows: &[Vec<String>]) -> io::Result<()> {
    for row in rows {
        writeln!(w, "{}", row.join(", "))?;
    }
    Ok(())
}

pub fn endpoint_health(w: &mut dyn Write, list: &[EpHealth]) -> io::Result<()> {
    for h in list {
        if h.error.is_empty() {
            writeln!(w, "{} is healthy: successfully committed proposal: took = {}", h.endpoint, h.took)?;
        } else {
            writeln!(w, "{} is unhealthy: failed to commit proposal: {}", h.endpoint, h.error)?;
        }
    }
    Ok(())
}
