"""slo: see DESIGN.md section 2."""
