"""Between an out-of-band or sent factor and the engine's decision: the
rounds a factor needs (start, prompt, wait, answer), built from the
factor's results, the pending challenges and the engine's decisions, so the
engine stays the pipeline and each factor's flow lives beside the others."""
