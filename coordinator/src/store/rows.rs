//! Reading rows back into the state machine's records, and encoding the JSON columns.

use std::collections::BTreeMap;
use std::str::FromStr;

use sqlx::{ColumnIndex, Decode, Row, Type};

use super::{Result, StoreError};
use crate::txn::{BranchOp, GlobalTxn, TransOptions, TxnError};

/// The JSON-encoded columns of a global transaction.
pub(crate) struct EncodedGlobal {
    pub steps: String,
    pub payloads: String,
    pub options: String,
}

impl EncodedGlobal {
    pub fn new(txn: &GlobalTxn) -> Self {
        // Serializing maps of strings and plain structs cannot fail.
        let json = |v: serde_json::Result<String>| v.unwrap_or_else(|_| "null".to_owned());
        Self {
            steps: json(serde_json::to_string(&txn.steps)),
            payloads: json(serde_json::to_string(&txn.payloads)),
            options: json(serde_json::to_string(&txn.options)),
        }
    }
}

fn get<'r, R, T>(row: &'r R, column: &str) -> Result<T>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    T: Decode<'r, R::Database> + Type<R::Database>,
{
    // Unchecked: the schema is ours, and MySQL reports the binary-collated (case-sensitive)
    // text columns as VARBINARY, which the checked decode of `String` refuses.
    Ok(row.try_get_unchecked(column)?)
}

/// Parses a stored status or type code.
pub(super) fn parse_code<T: FromStr<Err = TxnError>>(gid: &str, code: &str) -> Result<T> {
    code.parse().map_err(|e: TxnError| StoreError::Corrupt {
        gid: gid.to_owned(),
        reason: e.to_string(),
    })
}

/// Parses a JSON column. A column that does not parse is an error, or, when `lenient`, the
/// type's default with the reason kept in `unreadable` (the first one met).
fn json_column<T: serde::de::DeserializeOwned + Default>(
    gid: &str,
    column: &str,
    text: &str,
    lenient: bool,
    unreadable: &mut Option<String>,
) -> Result<T> {
    match serde_json::from_str(text) {
        Ok(v) => Ok(v),
        Err(e) if lenient => {
            unreadable.get_or_insert(format!("column {column}: {e}"));
            Ok(T::default())
        }
        Err(e) => Err(StoreError::Corrupt {
            gid: gid.to_owned(),
            reason: format!("column {column}: {e}"),
        }),
    }
}

/// How a `trans_global` row is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reading {
    /// For driving it: any column that cannot be read is an error.
    Strict,
    /// For showing it (`query`, `all`): a row whose JSON columns cannot be read is shown with
    /// those columns empty and `last_error` saying what is wrong, rather than failing the
    /// whole answer. Status and type codes must still parse.
    Lenient,
}

/// Reads a `trans_global` row.
pub(crate) fn decode_global<R>(row: &R, reading: Reading) -> Result<GlobalTxn>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
{
    let lenient = reading == Reading::Lenient;
    let gid: String = get(row, "gid")?;
    let mut unreadable: Option<String> = None;
    let json = |column: &str| -> Result<String> { get::<_, String>(row, column) };
    let steps: Vec<BTreeMap<String, String>> =
        json_column(&gid, "steps", &json("steps")?, lenient, &mut unreadable)?;
    let payloads: Vec<String> = json_column(
        &gid,
        "payloads",
        &json("payloads")?,
        lenient,
        &mut unreadable,
    )?;
    let options: TransOptions =
        json_column(&gid, "options", &json("options")?, lenient, &mut unreadable)?;
    let mut last_error: String = get(row, "last_error")?;
    if let Some(reason) = unreadable {
        last_error = format!("{UNREADABLE}{reason}");
    }
    Ok(GlobalTxn {
        trans_type: parse_code(&gid, &get::<_, String>(row, "trans_type")?)?,
        status: parse_code(&gid, &get::<_, String>(row, "status")?)?,
        custom_data: get(row, "custom_data")?,
        steps,
        payloads,
        query_prepared: get(row, "query_prepared")?,
        protocol: get(row, "protocol")?,
        options,
        rollback_reason: get(row, "rollback_reason")?,
        create_time: get(row, "create_time")?,
        update_time: get(row, "update_time")?,
        finish_time: get(row, "finish_time")?,
        rollback_time: get(row, "rollback_time")?,
        submit_time: get(row, "submit_time")?,
        callback_due: get(row, "callback_due")?,
        next_cron_time: get(row, "next_cron_time")?,
        next_cron_interval: get(row, "next_cron_interval")?,
        owner: get(row, "owner")?,
        lease_token: get(row, "lease_token")?,
        lease_expire: get(row, "lease_expire")?,
        retry_count: get(row, "retry_count")?,
        last_error,
        gid,
    })
}

/// How `last_error` starts for a transaction Settle cannot read and has set aside.
pub const UNREADABLE: &str = "set aside, unreadable: ";

/// Reads a `trans_branch_op` row.
pub(crate) fn decode_branch<R>(row: &R) -> Result<BranchOp>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
{
    let gid: String = get(row, "gid")?;
    Ok(BranchOp {
        id: get(row, "id")?,
        branch_id: get(row, "branch_id")?,
        op: parse_code(&gid, &get::<_, String>(row, "op")?)?,
        url: get(row, "url")?,
        data: get(row, "data")?,
        status: parse_code(&gid, &get::<_, String>(row, "status")?)?,
        create_time: get(row, "create_time")?,
        update_time: get(row, "update_time")?,
        finish_time: get(row, "finish_time")?,
        gid,
    })
}

/// Formats ms since the Unix epoch as RFC 3339 in UTC, e.g. `2026-11-21T23:28:44.123Z`.
pub fn format_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Converts days since 1970-01-01 to a (year, month, day) date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_formatted_as_rfc3339_utc() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time(1_795_822_124_123), "2026-11-27T23:28:44.123Z");
        assert_eq!(format_time(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
