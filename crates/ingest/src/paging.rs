//! Paged listings. Every AEP list call (Catalog's `start` offsets, Data Access's `_links.next`,
//! Flow Service's continuation tokens, the segmentation and export APIs' cursors) reads its
//! pages through [`collect`], which owns the one rule for a listing that does not advance.

use std::collections::HashSet;
use std::hash::Hash;

use url::Url;

use crate::error::IngestError;

/// Empty pages in a row, each with a next cursor, followed before a listing is called endless.
pub(crate) const MAX_EMPTY_PAGES: u32 = 20;

/// Who makes a listing's cursors, which names what a page of old items means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cursors {
    /// The server hands out each next cursor (links, tokens): a page of old items means its
    /// link leads back ([`IngestError::RepeatedNextLink`]).
    Served,
    /// We count them (`start` offsets): a page of old items means the server ignores them
    /// ([`IngestError::ListingNotAdvancing`]).
    Counted,
}

/// One page of a listing.
pub(crate) struct Page<T, C> {
    /// Where it was read (errors name it).
    pub url: Url,
    pub items: Vec<T>,
    /// The next page's cursor; `None` on the last page.
    pub next: Option<C>,
}

/// Every item of a listing, in order: pages are read from the cursor `first` until one has
/// no next cursor or `limit` items are in hand. An item a page repeats from an earlier one
/// (pages that shift while they are read, a cursor that starts at the last item served) is
/// kept once, by `key`. A listing that does not advance is an error, never a loop:
/// - a next cursor seen before: [`IngestError::RepeatedNextLink`];
/// - a page whose items were all listed before: the cursor leads back
///   ([`IngestError::RepeatedNextLink`]) or is ignored ([`IngestError::ListingNotAdvancing`]),
///   as `cursors` says;
/// - [`MAX_EMPTY_PAGES`] empty pages in a row that each point further:
///   [`IngestError::ListingNotAdvancing`].
pub(crate) async fn collect<T, K, C, Fut>(
    cursors_are: Cursors,
    first: C,
    limit: usize,
    key: impl Fn(&T) -> K,
    mut fetch: impl FnMut(C) -> Fut,
) -> Result<Vec<T>, IngestError>
where
    K: Eq + Hash,
    C: Eq + Hash + Clone,
    Fut: Future<Output = Result<Page<T, C>, IngestError>>,
{
    let mut cursors = HashSet::from([first.clone()]);
    let mut keys = HashSet::new();
    let mut out = Vec::new();
    let mut empty = 0u32;
    let mut cursor = first;
    loop {
        let page = fetch(cursor).await?;
        let listed = page.items.len();
        let before = out.len();
        out.extend(page.items.into_iter().filter(|item| keys.insert(key(item))));
        let added = out.len() - before;
        if added < listed {
            tracing::debug!(url = %page.url, repeated = listed - added, "dropped items an earlier page listed");
        }
        let Some(next) = page.next else {
            break;
        };
        if out.len() >= limit {
            break;
        }
        if !cursors.insert(next.clone()) {
            return Err(IngestError::RepeatedNextLink {
                url: page.url.to_string(),
            });
        }
        if listed > 0 && added == 0 {
            let url = page.url.to_string();
            return Err(match cursors_are {
                Cursors::Served => IngestError::RepeatedNextLink { url },
                Cursors::Counted => IngestError::ListingNotAdvancing { url, pages: 1 },
            });
        }
        empty = if listed == 0 { empty + 1 } else { 0 };
        if empty >= MAX_EMPTY_PAGES {
            return Err(IngestError::ListingNotAdvancing {
                url: page.url.to_string(),
                pages: empty,
            });
        }
        cursor = next;
    }
    out.truncate(limit);
    Ok(out)
}

/// A JSON item's key for [`collect`]: its `id`, or else the whole item.
pub(crate) fn item_key(item: &serde_json::Value) -> String {
    match item.get("id") {
        Some(serde_json::Value::String(id)) => id.clone(),
        Some(id) => id.to_string(),
        None => item.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listing of `pages` (each a list of items and the next cursor), read through
    /// [`collect`].
    async fn read(
        pages: Vec<(Vec<u32>, Option<usize>)>,
        limit: usize,
    ) -> Result<Vec<u32>, IngestError> {
        read_as(Cursors::Counted, pages, limit).await
    }

    async fn read_as(
        cursors: Cursors,
        pages: Vec<(Vec<u32>, Option<usize>)>,
        limit: usize,
    ) -> Result<Vec<u32>, IngestError> {
        let url = Url::parse("http://platform.test/list").unwrap();
        collect(
            cursors,
            0usize,
            limit,
            |i: &u32| *i,
            |c: usize| {
                let (items, next) = pages[c].clone();
                let url = url.clone();
                async move { Ok(Page { url, items, next }) }
            },
        )
        .await
    }

    #[tokio::test]
    async fn pages_are_read_in_order_until_the_last_or_the_limit() {
        let pages = vec![
            (vec![1, 2], Some(1)),
            (vec![3, 4], Some(2)),
            (vec![5], None),
        ];
        assert_eq!(
            read(pages.clone(), usize::MAX).await.unwrap(),
            [1, 2, 3, 4, 5]
        );
        assert_eq!(read(pages, 3).await.unwrap(), [1, 2, 3]);
    }

    #[tokio::test]
    async fn overlapping_pages_keep_each_item_once() {
        let pages = vec![(vec![1, 2], Some(1)), (vec![2, 3], None)];
        assert_eq!(read(pages, usize::MAX).await.unwrap(), [1, 2, 3]);
    }

    #[tokio::test]
    async fn a_listing_that_does_not_advance_is_an_error() {
        // The same cursor again.
        let err = read(vec![(vec![1], Some(1)), (vec![2], Some(1))], usize::MAX)
            .await
            .unwrap_err();
        assert!(matches!(err, IngestError::RepeatedNextLink { .. }), "{err}");
        // New cursors, the same items (the server ignores the cursor).
        let err = read(
            vec![(vec![1], Some(1)), (vec![1], Some(2)), (vec![1], Some(3))],
            usize::MAX,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, IngestError::ListingNotAdvancing { pages: 1, .. }),
            "{err}"
        );
        // The same items behind a new link the server made: its link leads back.
        let err = read_as(
            Cursors::Served,
            vec![(vec![1], Some(1)), (vec![1], Some(2))],
            usize::MAX,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, IngestError::RepeatedNextLink { .. }), "{err}");
        // Empty pages that always point further: followed a while, then an error.
        let endless: Vec<_> = (0..100).map(|i| (Vec::new(), Some(i + 1))).collect();
        let err = read(endless, usize::MAX).await.unwrap_err();
        assert!(
            matches!(
                err,
                IngestError::ListingNotAdvancing {
                    pages: MAX_EMPTY_PAGES,
                    ..
                }
            ),
            "{err}"
        );
        let mut some_empty: Vec<_> = (0..3).map(|i| (Vec::new(), Some(i + 1))).collect();
        some_empty.push((vec![7], None));
        assert_eq!(read(some_empty, usize::MAX).await.unwrap(), [7]);
    }
}
