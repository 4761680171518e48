//! A test binary that dies without printing a test result, as one killed for memory does.
#[test]
fn the_process_aborts() {
    std::process::abort();
}
