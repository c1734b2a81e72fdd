//! How an aggregate whose rules are a pure decision (`decide`: its state and a command in,
//! the events that follow out) answers cqrs-es's `handle`.

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;

/// Writes the events `decision` holds, in order, each applied to `aggregate` as it is written;
/// a refused command writes nothing.
pub async fn record_decision<A: Aggregate>(
    decision: Result<Vec<A::Event>, A::Error>,
    aggregate: &mut A,
    sink: &EventSink<A>,
) -> Result<(), A::Error> {
    for event in decision? {
        sink.write(event, aggregate).await;
    }
    Ok(())
}
