//! Open file descriptions of eventfd, signalfd and timerfd (see eventfd(2), signalfd(2), timerfd_create(2)).
