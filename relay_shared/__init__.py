"""Small pieces both processes (agent_service and ws_edge) share."""
