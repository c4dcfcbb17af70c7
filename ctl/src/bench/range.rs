//! The range workload (etcd benchmark's `range`): every request reads KEY,
//! or [KEY, END) when END is given, linearizably (`l`, through the leader's
//! read index) or serializably (`s`, from the member's local state).

use etcd_client::{Client, GetOptions};

use super::Workload;

#[derive(Debug, clap::Args)]
pub struct RangeArgs {
    /// The key to read, or the start of the range.
    // Its id cannot be `key`: that is raftkvctl's global TLS `--key` flag.
    #[arg(id = "range_key", value_name = "KEY")]
    pub key: String,
    /// End of the range (exclusive); without it only KEY is read.
    #[arg(value_name = "END")]
    pub end: Option<String>,
    /// Linearizable (l) or serializable (s).
    #[arg(long, default_value = "l", value_parser = ["l", "s"])]
    pub consistency: String,
}

impl RangeArgs {
    pub(super) fn workload(&self) -> Range {
        let mut options = GetOptions::new();
        if let Some(end) = &self.end {
            options = options.with_range(end.as_bytes());
        }
        if self.consistency == "s" {
            options = options.with_serializable();
        }
        Range { key: self.key.clone().into_bytes(), options }
    }
}

pub(super) struct Range {
    key: Vec<u8>,
    options: GetOptions,
}

impl Workload for Range {
    type Session = ();

    async fn open(&self, _client: &mut Client) -> Result<(), etcd_client::Error> {
        Ok(())
    }

    async fn request(&self, client: &mut Client, _: &mut (), _seq: u64) -> Result<(), etcd_client::Error> {
        client.get(self.key.clone(), Some(self.options.clone())).await.map(drop)
    }
}
