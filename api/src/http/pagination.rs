//! Keyset pagination, the one way every list pages: `limit` (1 to 200,
//! default 50) and an opaque `cursor` parse into a `PageRequest`; the query
//! fetches `limit + 1` rows after the cursor, and `Page::from_rows` turns
//! them into the page and the next cursor.

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::http::error::AppError;

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 200;

const LIMIT_MESSAGE: &str = "limit must be between 1 and 200";

/// A validated page request: the page size and where the page starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PageRequest {
    pub limit: i64,
    pub cursor: Option<Cursor>,
}

impl PageRequest {
    /// `limit`: absent means the default, outside 1..=200 is a 400; a
    /// malformed cursor is a 400; an empty cursor means the first page.
    pub fn parse(limit: Option<i64>, cursor: Option<&str>) -> Result<Self, AppError> {
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(n) if (1..=MAX_LIMIT).contains(&n) => n,
            Some(_) => return Err(AppError::bad_request(LIMIT_MESSAGE)),
        };
        let cursor = cursor
            .filter(|c| !c.is_empty())
            .map(Cursor::decode)
            .transpose()?;
        Ok(Self { limit, cursor })
    }

    /// The same from a `limit` taken as text, so that a non-number gets the
    /// same message as a number out of range.
    pub fn parse_text(limit: Option<&str>, cursor: Option<&str>) -> Result<Self, AppError> {
        let limit = match limit.map(str::trim).filter(|v| !v.is_empty()) {
            None => None,
            Some(v) => Some(
                v.parse::<i64>()
                    .map_err(|_| AppError::bad_request(LIMIT_MESSAGE))?,
            ),
        };
        Self::parse(limit, cursor)
    }

    /// Rows to fetch: one more than the page, to learn whether a next exists.
    pub fn fetch(&self) -> i64 {
        self.limit + 1
    }

    pub fn cursor_at(&self) -> Option<DateTime<Utc>> {
        self.cursor.map(|c| c.at)
    }

    pub fn cursor_id(&self) -> Option<Uuid> {
        self.cursor.map(|c| c.id)
    }

    /// The page of `rows` (fetched with `fetch()`), its next cursor taken
    /// from the last row by `key`.
    pub fn page<T>(&self, rows: Vec<T>, key: impl Fn(&T) -> Cursor) -> Page<T> {
        Page::from_rows(rows, self.limit, key)
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
    fn from_rows(mut rows: Vec<T>, limit: i64, key: impl Fn(&T) -> Cursor) -> Self {
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

    fn limit(value: Option<i64>) -> Option<i64> {
        PageRequest::parse(value, None).ok().map(|p| p.limit)
    }

    #[test]
    fn limit_bounds() {
        assert_eq!(limit(None), Some(50));
        assert_eq!(limit(Some(1)), Some(1));
        assert_eq!(limit(Some(200)), Some(200));
        assert_eq!(limit(Some(0)), None);
        assert_eq!(limit(Some(201)), None);
        assert_eq!(limit(Some(-5)), None);
    }

    #[test]
    fn limit_as_text_gets_the_same_answers() {
        let text = |v| PageRequest::parse_text(v, None).map(|p| p.limit);
        assert_eq!(text(None).ok(), Some(50));
        assert_eq!(text(Some(" ")).ok(), Some(50));
        assert_eq!(text(Some("200")).ok(), Some(200));
        let message = |v| text(Some(v)).expect_err("refused").to_string();
        assert_eq!(message("abc"), message("201"));
    }

    #[test]
    fn empty_cursor_is_the_first_page() {
        let page = PageRequest::parse(None, Some("")).expect("first page");
        assert_eq!(page.cursor, None);
        assert!(PageRequest::parse(None, Some("zz")).is_err());
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
