"""RSI and EB of sampled gradients along training paths.

After Guille-Escuret, Naganuma, Fatras and Mitliagkas, "No Wrong Turns: The
Simple Geometry Of Neural Networks Optimization Paths" (ICML 2024).

  quantities  pure functions on pytrees: RSI, EB, gamma, eta* (`Geometry`)
  probes      `common.loop.StepView` probes that store the raw pieces
  protocol    two passes (w* = final iterate, bit-exact replay), controls,
              summaries
  setups      seeded MLP populations; plots, summary, experiment, demos
              build the report (import them only where needed)
"""
