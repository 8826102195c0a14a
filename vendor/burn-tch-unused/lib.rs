//! Never compiled: see Cargo.toml. distill-sim's LibTorch engine is `src/model/tch_engine.rs`.
