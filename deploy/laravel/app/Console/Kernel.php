<?php

declare(strict_types=1);

namespace App\Console;

use Illuminate\Foundation\Console\Kernel as ConsoleKernel;

class Kernel extends ConsoleKernel
{
    /**
     * @var array<int, class-string>
     */
    protected $commands = [
        Commands\Service4CTSubmit::class,
        Commands\Service4CTShow::class,
        Commands\Service4CTList::class,
        Commands\Service4CTCancel::class,
    ];
}
