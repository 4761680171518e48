//! Message sequences through the proxy core (transactions, dialogs, registrar, the flood
//! defence): raw and mutated messages, answers to what it relayed, in-dialog requests,
//! CANCELs and time passing (`sip_proxy::sequences`). Nothing may panic, and ten quiet minutes
//! after the sequence no transaction or dialog may be left.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sip_proxy::sequences::run(data);
});
