"""The graphical console: what a display adapter shows, and the servers that show it (VNC, web, screendump)."""
