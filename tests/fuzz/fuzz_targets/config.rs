//! The config loader on any text: it never panics; it accepts the file or
//! lists at least one problem.
#![no_main]
use gateway::config::Config;
use libfuzzer_sys::fuzz_target;

struct NoEnv;
impl gateway::config::Env for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = Config::parse(std::path::Path::new("fuzz.toml"), text, &NoEnv) {
        assert!(!e.problems.is_empty());
    }
});
