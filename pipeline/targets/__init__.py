"""Pure target functions (numpy in, numpy out): depth quantisation, normals, groups, text masks, caption tokens."""
