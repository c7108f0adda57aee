//! RL algorithms: A*PO (V* estimation + regression loss) and GRPO.
