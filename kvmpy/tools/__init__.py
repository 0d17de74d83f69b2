"""Tools that make boot assets for users and for kvmpy's own test bed.

  fetch      Debian kernel packages and a static busybox, cached (KVMPY_CACHE, ~/.cache/kvmpy)
  cpio       the newc archive writer (the format Linux unpacks as an initramfs)
  initramfs  kernel modules with their dependencies, and a busybox initramfs archive
  initrd     the ``kvmpy initrd`` command
"""
