//! Open file descriptions of epoll instances (see epoll(7)).
