// Anchors the precompiled header target; it holds no code.
