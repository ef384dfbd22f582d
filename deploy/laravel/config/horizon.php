<?php

declare(strict_types=1);

// config/horizon.php: Horizon (`composer require laravel/horizon`, `php artisan horizon:install`)
// supervising the same Redis queue that `php artisan queue:work redis` works. Horizon merges its
// own defaults under the keys not set here. Without Horizon installed this file is not read.
return [
    'use' => 'default', // the Redis connection of config/database.php
    'prefix' => env('HORIZON_PREFIX', 'service4ct_laravel_horizon:'),
    'waits' => ['redis:default' => 60],
    'trim' => ['recent' => 60, 'pending' => 60, 'completed' => 60, 'recent_failed' => 10080, 'failed' => 10080],
    'fast_termination' => false,
    'memory_limit' => 256,

    'defaults' => [
        'service4ct' => [
            'connection' => 'redis',
            'queue' => [env('REDIS_QUEUE', 'default')],
            'balance' => 'auto',
            'autoScalingStrategy' => 'time',
            'maxProcesses' => 1,
            // SubmitStudyToService4CT: $tries = 6 and backoff() are the job's own and win over these
            'tries' => 6,
            // above the job's $timeout (1200 s) and below the queue's retry_after (1320 s)
            'timeout' => 1260,
            'memory' => 256,
            'nice' => 0,
        ],
    ],

    'environments' => [
        'production' => [
            // uploads are network-bound: a few processes keep several studies in flight
            'service4ct' => ['maxProcesses' => 8, 'balanceMaxShift' => 1, 'balanceCooldown' => 3],
        ],
        'local' => [
            'service4ct' => ['maxProcesses' => 2],
        ],
    ],
];
