"""The pure planner: types, memory model, strategies, nodes, the CPU path; its entry is plan.make_plan."""
