//! Reading rusqlite rows as the schema stores them (the SQLite writer's statements): ids as
//! 16-byte blobs, states and kinds as the text of their enum.

use uuid::Uuid;

pub(crate) fn uuid_at(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Uuid> {
    let blob = row.get_ref(i)?.as_blob()?;
    Uuid::from_slice(blob)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Blob, e.into()))
}

/// A state or kind at column `i`, as its enum (a value none of its variants is an error).
pub(crate) fn text_at<T>(row: &rusqlite::Row<'_>, i: usize, parse: fn(&str) -> Option<T>) -> rusqlite::Result<T> {
    let text = row.get_ref(i)?.as_str()?;
    parse(text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("{text:?} is none of the column's values").into(),
        )
    })
}

pub(crate) fn opt_uuid_at(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Option<Uuid>> {
    match row.get_ref(i)? {
        rusqlite::types::ValueRef::Null => Ok(None),
        _ => uuid_at(row, i).map(Some),
    }
}
