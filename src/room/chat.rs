//! A room's chat: numbering, time-stamping and the bounded history new participants receive.

use std::collections::VecDeque;

use crate::model::{ChatMessage, ChatSender};

/// The chat of one room. Lives as long as the room, through its empty grace period.
#[derive(Debug)]
pub struct ChatLog {
    next_id: u64,
    capacity: usize,
    history: VecDeque<ChatMessage>,
}

impl ChatLog {
    pub fn new(capacity: usize) -> Self {
        Self {
            next_id: 1,
            capacity,
            history: VecDeque::with_capacity(capacity.min(1024)),
        }
    }

    /// Stamps a message with the next id and the given time, keeps it, and returns it.
    pub fn post(&mut self, sender: ChatSender, text: String, time_ms: u64) -> ChatMessage {
        let message = ChatMessage {
            id: self.next_id,
            sender,
            text,
            time: time_ms,
        };
        self.next_id += 1;
        if self.capacity > 0 {
            if self.history.len() == self.capacity {
                self.history.pop_front();
            }
            self.history.push_back(message.clone());
        }
        message
    }

    /// Takes back the history a room had on another node (cluster mode: kept in Redis), if
    /// this log has none of its own yet; numbering goes on after its last message.
    pub fn restore(&mut self, messages: Vec<ChatMessage>) {
        if self.next_id != 1 || !self.history.is_empty() {
            return;
        }
        let Some(last) = messages.last() else {
            return;
        };
        self.next_id = last.id + 1;
        let skip = messages.len().saturating_sub(self.capacity);
        self.history.extend(messages.into_iter().skip(skip));
    }

    /// The newest kept messages whose texts add up to at most `max_bytes`, oldest first: what
    /// a joiner gets, bounded so a full history cannot make every `joined` huge.
    pub fn history(&self, max_bytes: usize) -> Vec<ChatMessage> {
        let mut total = 0usize;
        let newest = self.history.iter().rev().take_while(|m| {
            total += m.text.len();
            total <= max_bytes
        });
        let mut out: Vec<ChatMessage> = newest.cloned().collect();
        out.reverse();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender() -> ChatSender {
        ChatSender {
            sid: "s".into(),
            identity: "a".into(),
            name: "A".into(),
        }
    }

    #[test]
    fn history_keeps_the_last_messages_in_order() {
        let mut log = ChatLog::new(2);
        for i in 0..5 {
            log.post(sender(), format!("m{i}"), i);
        }
        let texts: Vec<_> = log
            .history(usize::MAX)
            .into_iter()
            .map(|m| (m.id, m.text))
            .collect();
        assert_eq!(texts, vec![(4, "m3".into()), (5, "m4".into())]);
    }

    #[test]
    fn a_restored_history_is_kept_and_numbered_on_only_while_the_log_is_new() {
        let mut old = ChatLog::new(10);
        for i in 0..4 {
            old.post(sender(), format!("m{i}"), i);
        }
        let mut log = ChatLog::new(3);
        log.restore(old.history(usize::MAX));
        let next = log.post(sender(), "after".into(), 9);
        assert_eq!(next.id, 5, "numbering goes on");
        let ids: Vec<u64> = log.history(usize::MAX).iter().map(|m| m.id).collect();
        assert_eq!(ids, vec![3, 4, 5], "capped at its capacity");
        // A log with messages of its own keeps them.
        log.restore(old.history(usize::MAX));
        assert_eq!(log.history(usize::MAX).len(), 3);
        assert_eq!(log.post(sender(), "x".into(), 10).id, 6);
    }

    #[test]
    fn history_for_a_joiner_is_bounded_in_bytes_newest_first() {
        let mut log = ChatLog::new(100);
        for i in 0..100 {
            log.post(sender(), format!("{i:04}").repeat(1000), i);
        }
        let kept = log.history(10_000);
        assert_eq!(kept.len(), 2, "4000 bytes each");
        assert_eq!((kept[0].id, kept[1].id), (99, 100));
    }
}
