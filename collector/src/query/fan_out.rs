//! Answering for many instances at once: each instance's part of an answer
//! is independent of the others', so a fleet-wide question spreads its
//! instances over the machine's cores and keeps their order.

use std::num::NonZeroUsize;
use std::thread;

/// `each` applied to every item on up to one thread per core, results in
/// the items' order; the first error wins.
pub fn fan_out<I, T, E>(items: Vec<I>, each: impl Fn(I) -> Result<T, E> + Sync) -> Result<Vec<T>, E>
where
    I: Send,
    T: Send,
    E: Send,
{
    let threads = thread::available_parallelism().map_or(1, NonZeroUsize::get);
    if threads == 1 || items.len() < 2 {
        return items.into_iter().map(each).collect();
    }
    let per_thread = items.len().div_ceil(threads);
    let mut chunks: Vec<Vec<I>> = Vec::new();
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        chunks.push(items.by_ref().take(per_thread).collect());
    }
    let each = &each;
    thread::scope(|s| {
        let workers: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                s.spawn(move || chunk.into_iter().map(each).collect::<Result<Vec<T>, E>>())
            })
            .collect();
        let mut out = Vec::new();
        for w in workers {
            out.extend(w.join().expect("a query thread panicked")?);
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_order_and_reports_an_error() {
        let squares = fan_out((0..1000).collect(), |i: u64| Ok::<_, ()>(i * i)).unwrap();
        assert_eq!(squares, (0..1000).map(|i| i * i).collect::<Vec<_>>());
        let failed = fan_out(
            (0..1000).collect(),
            |i: u64| if i == 700 { Err(i) } else { Ok(i) },
        );
        assert_eq!(failed, Err(700));
    }
}
