//! Open file descriptions of inotify and fanotify instances (see inotify(7), fanotify(7)).
