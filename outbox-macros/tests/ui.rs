//! Compile-fail tests: each mistake is reported once, at its own tokens.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass.rs");
    t.compile_fail("tests/ui/fail-*.rs");
}
