//! List parameters shared by every list endpoint: `limit` (1 to 200, default
//! 50) and an opaque keyset `cursor`.

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::http::error::AppError;

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 200;

/// Validates `limit`: absent means the default; outside 1..=200 is a 400.
pub fn limit(value: Option<i64>) -> Result<i64, AppError> {
    match value {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(AppError::bad_request("limit must be between 1 and 200")),
    }
}

/// A position in a list ordered by `(created_at DESC, id DESC)` or similar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub at: DateTime<Utc>,
    pub id: Uuid,
}

impl Cursor {
    pub fn encode(&self) -> String {
        let raw = format!("{}|{}", self.at.to_rfc3339(), self.id);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    /// Decodes a cursor from a query; anything malformed is a 400.
    pub fn decode(value: &str) -> Result<Self, AppError> {
        let bad = || AppError::bad_request("cursor is malformed");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(value)
            .map_err(|_| bad())?;
        let raw = String::from_utf8(bytes).map_err(|_| bad())?;
        let (at, id) = raw.split_once('|').ok_or_else(bad)?;
        Ok(Self {
            at: DateTime::parse_from_rfc3339(at)
                .map_err(|_| bad())?
                .with_timezone(&Utc),
            id: id.parse().map_err(|_| bad())?,
        })
    }

    pub fn decode_opt(value: Option<&str>) -> Result<Option<Self>, AppError> {
        value.map(Self::decode).transpose()
    }
}

/// A page of items and the cursor of the next page (absent on the last).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from `limit + 1` fetched rows: the extra row only says
    /// that there is a next page.
    pub fn from_rows(mut rows: Vec<T>, limit: i64, key: impl Fn(&T) -> Cursor) -> Self {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let next_cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|r| key(r).encode())
        } else {
            None
        };
        Self {
            items: rows,
            next_cursor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_bounds() {
        assert_eq!(limit(None).ok(), Some(50));
        assert_eq!(limit(Some(1)).ok(), Some(1));
        assert_eq!(limit(Some(200)).ok(), Some(200));
        assert!(limit(Some(0)).is_err());
        assert!(limit(Some(201)).is_err());
        assert!(limit(Some(-5)).is_err());
    }

    #[test]
    fn cursor_round_trip_and_garbage() {
        let c = Cursor {
            at: Utc::now(),
            id: Uuid::new_v4(),
        };
        assert_eq!(Cursor::decode(&c.encode()).ok(), Some(c));
        assert!(Cursor::decode("not a cursor").is_err());
        assert!(Cursor::decode("").is_err());
    }

    #[test]
    fn page_sets_next_cursor_only_when_more_rows() {
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        let at = Utc::now();
        let key = |id: &Uuid| Cursor { at, id: *id };
        let page = Page::from_rows(ids.clone(), 2, key);
        assert_eq!(page.items.len(), 2);
        assert_eq!(page.next_cursor, Some(key(&ids[1]).encode()));
        let page = Page::from_rows(ids, 3, key);
        assert!(page.next_cursor.is_none());
    }
}
