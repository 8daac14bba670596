"""Tracking sessions: motion from sensor windows, a particle filter over WiFi fixes and the walkable area, and a
forward-backward smoother for whole walks. Pure numpy (+ shapely for floor plans); no service imports."""
