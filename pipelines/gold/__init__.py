"""Gold: business tables computed from silver (engagement, sessions, daily tables,
notifications, system health)."""
