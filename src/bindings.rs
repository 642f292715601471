//! Bindings generated from `wit/` (world `provider`).

wit_bindgen_wrpc::generate!({ world: "provider", path: "wit", generate_all });
