//! Placeholder until the derive lands.
use proc_macro::TokenStream;
/// Placeholder.
#[proc_macro_derive(OutboxEvent, attributes(outbox))]
pub fn derive(_input: TokenStream) -> TokenStream { TokenStream::new() }
