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

    /// The kept messages, oldest first.
    pub fn history(&self) -> Vec<ChatMessage> {
        self.history.iter().cloned().collect()
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
        let texts: Vec<_> = log.history().into_iter().map(|m| (m.id, m.text)).collect();
        assert_eq!(texts, vec![(4, "m3".into()), (5, "m4".into())]);
    }
}
