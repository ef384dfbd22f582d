<?php

declare(strict_types=1);

namespace App\Providers;

use App\Events\Service4CTJobFinished;
use App\Listeners\ReadService4CTResult;
use Illuminate\Foundation\Support\Providers\EventServiceProvider as ServiceProvider;

class EventServiceProvider extends ServiceProvider
{
    /**
     * @var array<class-string, array<int, class-string>>
     */
    protected $listen = [
        Service4CTJobFinished::class => [
            ReadService4CTResult::class,
        ],
    ];

    public function shouldDiscoverEvents(): bool
    {
        return false;
    }
}
